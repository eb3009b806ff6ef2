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
