"""The one atomic local writer (qpe_core.atomic) every file writer of the package goes through."""

import json
import stat
import threading

import numpy as np
import pytest

from qpe_core.atomic import write_atomically, write_json_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "card.json"
    write_json_atomically(target, {"step": 1})
    seen = []

    def broken(tmp):
        seen.append(tmp.name)
        tmp.write_text('{"step": ')  # half a file, then the writer dies
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_atomically(target, broken)
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in target.parent.iterdir()] == ["card.json"]
    # hidden, and ends in .tmp with the target's extension before it: what the product readers skip
    assert seen[0].startswith(".card.") and seen[0].endswith(".json.tmp")


def test_the_file_is_readable_by_others_and_whole_under_concurrent_writers(tmp_path):
    target = tmp_path / "index.npy"
    arrays = [np.full(200_000, k, "int64") for k in range(6)]

    def write(a):
        def to(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, a)
        write_atomically(target, to)

    threads = [threading.Thread(target=write, args=(a,)) for a in arrays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = np.load(target)
    assert len(set(got.tolist())) == 1 and got.size == 200_000  # one writer's whole array
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["index.npy"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    from qpe_core.atomic import write_dir_atomically

    def store(text):
        def write(d):
            (d / "a").write_text(text)
            (d / "sub").mkdir()
            (d / "sub" / "b").write_text(text)
        return write

    target = tmp_path / "x.zarr"
    assert write_dir_atomically(target, store("one")) == target
    write_dir_atomically(target, store("two"))  # an existing store is replaced, not merged
    assert (target / "a").read_text() == "two" and (target / "sub" / "b").read_text() == "two"

    def fails(d):
        (d / "a").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(target, fails)
    assert (target / "a").read_text() == "two"  # the old store stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]  # no temporary or old directory left
