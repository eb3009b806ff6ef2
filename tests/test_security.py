"""Security review (issue 6 item 4): where secrets come from and where they never go, what the
container image may hold, checkpoints and inputs read without pickle, Data Store names kept
inside the cache, S3 credentials from the standard chain.  See SECURITY.md."""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import logging
import pickle
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import prefect.main  # noqa: F401  (Prefect configures logging on this import: before caplog attaches)
import pytest

from datastore_server import DataStoreServer, Fault, scan, zip_files
from qpe_core.errors import ConfigError, InputFileError, QpeError

ROOT = Path(__file__).resolve().parents[1]
HRIT_DIR = ROOT.parent / "shared" / "data" / "seviri" / "hrit-20100119"
HRIT_CHANNELS = ["IR_039", "IR_108", "IR_134"]
SLOT = pd.Timestamp("2010-01-19T12:00")
ZERO_DEG = "EO:EUM:DAT:MSG:HRSEVIRI"
KEY, SECRET = "qpe-sec-KEY-4d1f7a9e", "qpe-sec-SECRET-b93e0c55"
ENV_CREDENTIALS = ("EUMETSAT_CONSUMER_KEY", "EUMETSAT_CONSUMER_SECRET", "QPE_EUMETSAT_CONSUMER_KEY",
                   "QPE_EUMETSAT_CONSUMER_SECRET", "QPE_EUMETSAT_KEY_BLOCK", "QPE_EUMETSAT_SECRET_BLOCK",
                   "QPE_EUMETSAT_API_URL")
TINY = {"base_channels": 8, "channel_mults": [1, 2], "emb_dim": 16}


def forms(*secrets: str) -> list[str]:
    """The secrets as written and base64-encoded (standard and URL-safe, with and without
    padding), each alone and as ``key:secret`` (HTTP Basic)."""
    out = list(secrets)
    for s in [*secrets, ":".join(secrets)]:
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(s.encode()).decode()
            out += [text, text.rstrip("=")]
    return sorted(set(out))


def leaks(blob: bytes | str, needles: list[str]) -> list[str]:
    data = blob.encode(errors="replace") if isinstance(blob, str) else blob
    return [n for n in needles if n.encode() in data]


def scan_tree(root: Path, needles: list[str], newer_than: float = 0.0) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= newer_than:
            hit = leaks(path.read_bytes(), needles)
            if hit:
                found[str(path)] = hit
    return found


@pytest.fixture
def no_env_credentials(monkeypatch):
    for var in ENV_CREDENTIALS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def hrit_zip() -> bytes:
    if not HRIT_DIR.is_dir():
        pytest.skip(f"real HRIT sample not found at {HRIT_DIR} (clone next to shared/)")
    return zip_files(sorted(HRIT_DIR.iterdir()))


@pytest.fixture(scope="module")
def hrit_checkpoint(tmp_path_factory) -> Path:
    """A tiny U-Net on the three HRIT channels, lag 0 only (a real checkpoint, 1 training step)."""
    from qpe_core.archive import Archive
    from qpe_core.simulate_archive import simulate_to_archive
    from qpe_core.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("ck")
    arc = Archive.create(str(root / "train.zarr"), "france-3km", HRIT_CHANNELS)
    simulate_to_archive(arc, "2024-06-01T00:00", 2, seed=1)
    train(TrainConfig(archive=arc.url, kind="unet", out=str(root / "unet"), max_steps=1, patch=32, batch_size=1,
                      lags=[0], val_fraction=0.0, backbone=TINY))
    return root / "unet"


# ----------------------------------------------------------------------------- secrets: sources

def test_secrets_come_from_environment_or_prefect_secret_blocks(prefect_server, no_env_credentials, monkeypatch,
                                                               tmp_path):
    from prefect.blocks.system import Secret

    from qpe_core.config import load_settings
    from qpe_core.sources.datastore import DataStoreSource

    with DataStoreServer(KEY, SECRET) as server:
        kw = dict(api_url=server.url, cache=tmp_path / "cache", slot_minutes=15)
        with pytest.raises(ConfigError, match="QPE_EUMETSAT_KEY_BLOCK"):
            DataStoreSource(**kw)
        # environment (either name)
        monkeypatch.setenv("EUMETSAT_CONSUMER_KEY", KEY)
        monkeypatch.setenv("QPE_EUMETSAT_CONSUMER_SECRET", SECRET)
        assert DataStoreSource(**kw)._token.credentials == (KEY, SECRET)
        # Prefect Secret blocks, read when the environment lacks the value
        Secret(value=KEY).save("qpe-test-eum-key", overwrite=True)
        Secret(value=SECRET).save("qpe-test-eum-secret", overwrite=True)
        monkeypatch.delenv("EUMETSAT_CONSUMER_KEY")
        monkeypatch.delenv("QPE_EUMETSAT_CONSUMER_SECRET")
        monkeypatch.setenv("QPE_EUMETSAT_KEY_BLOCK", "qpe-test-eum-key")
        monkeypatch.setenv("QPE_EUMETSAT_SECRET_BLOCK", "qpe-test-eum-secret")
        src = DataStoreSource(**kw)
        assert src._token.credentials == (KEY, SECRET) and src.fetch(SLOT) == []  # the token works
        # the environment wins over a block
        monkeypatch.setenv("EUMETSAT_CONSUMER_SECRET", "from-the-environment")
        assert DataStoreSource(**kw)._token.credentials == (KEY, "from-the-environment")
        monkeypatch.delenv("EUMETSAT_CONSUMER_SECRET")
        # a missing block: a ConfigError naming the block, not a value
        monkeypatch.setenv("QPE_EUMETSAT_SECRET_BLOCK", "qpe-no-such-block")
        with pytest.raises(ConfigError, match="'qpe-no-such-block' cannot be read") as err:
            DataStoreSource(**kw)
        assert not leaks(str(err.value), forms(KEY, SECRET))
    cfg = load_settings(eumetsat_key_block="a", eumetsat_secret_block="b")
    assert (cfg.eumetsat_key_block, cfg.eumetsat_secret_block) == ("a", "b")


def test_config_files_may_not_hold_secrets(tmp_path):
    from qpe_core.config import load_settings

    yaml = tmp_path / "qpe.yaml"
    yaml.write_text(f"area: france-3km\neumetsat_consumer_secret: {SECRET}\n")
    with pytest.raises(ConfigError, match="eumetsat_consumer_secret must not be in a config file") as err:
        load_settings(yaml)
    assert SECRET not in str(err.value)
    yaml.write_text("area: france-3km\neumetsat_key_block: eum-key\neumetsat_secret_block: eum-secret\n")
    assert load_settings(yaml).eumetsat_secret_block == "eum-secret"


def test_s3_credentials_are_not_settings():
    """S3 goes through s3fs / botocore's standard chain: no key field in the settings and no
    explicit credentials handed to s3fs or boto anywhere in the code."""
    from qpe_core.config import Settings

    assert not [f for f in Settings.model_fields if re.search(r"aws|s3|access_key", f, re.I)]
    pattern = re.compile(r"(aws_access_key_id|aws_secret_access_key|aws_session_token|\bkey\s*=|\bsecret\s*=|"
                         r"AWS_SECRET)", re.I)
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "qpe_core").rglob("*.py")) + sorted(
        (ROOT / "flows").rglob("*.py")) for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and "s3" in line.lower()]
    assert hits == []


# ----------------------------------------------------------------------------- secrets: never logged

def test_redactor_covers_prefect_run_loggers_and_tracebacks():
    from qpe_core.sources.base import REDACTED_LOGGERS, REDACTOR

    REDACTOR.add(SECRET)
    assert {"prefect.flow_runs", "prefect.task_runs", "eumdac"} <= set(REDACTED_LOGGERS)
    try:
        raise RuntimeError(f"request failed for consumer {SECRET}")
    except RuntimeError:
        import sys

        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "task failed: %s", (SECRET,),
                                   sys.exc_info())
    assert logging.getLogger("prefect.task_runs").filter(record)  # the logger's filters, as Logger.handle runs them
    text = logging.Formatter().format(record)
    assert SECRET not in text and text.count("***") >= 2 and "RuntimeError" in text


def test_full_nowcast_run_leaks_no_secret(prefect_server, no_env_credentials, monkeypatch, caplog, tmp_path,
                                          hrit_zip, hrit_checkpoint, s3_bucket):
    """The nowcast flow on the eumdac source (credentials from Prefect Secret blocks) against the
    local Data Store with faults, products on S3: no log record (pytest's capture and the Prefect
    run logs), artifact, run record or written file holds the key or the secret, raw or base64."""
    import s3fs
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, LogFilter, LogFilterFlowRunId)
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from flows.nowcast import nowcast

    started = time.time() - 1
    needles = forms(KEY, SECRET)
    bucket, opts = s3_bucket
    caplog.set_level(logging.DEBUG)
    Secret(value=KEY).save("qpe-test-run-key", overwrite=True)
    Secret(value=SECRET).save("qpe-test-run-secret", overwrite=True)
    with DataStoreServer(KEY, SECRET, token_validity_s=3600) as server:
        server.add(scan(ZERO_DEG, SLOT.to_pydatetime(), hrit_zip, "MSG2-SEVI-MSG15-0100-NA-20100119121241.713000000Z-NA"))
        server.inject("download", Fault(status=503), Fault(status=429, retry_after="0"))
        server.inject("search", Fault(status=401))
        for var, value in {"QPE_EUMETSAT_KEY_BLOCK": "qpe-test-run-key", "QPE_EUMETSAT_SECRET_BLOCK":
                           "qpe-test-run-secret", "QPE_EUMETSAT_API_URL": server.url,
                           "QPE_CACHE_DIR": str(tmp_path / "cache"), "AWS_ENDPOINT_URL": opts["endpoint_url"],
                           "QPE_CHANNELS": ",".join(HRIT_CHANNELS)}.items():
            monkeypatch.setenv(var, value)
        state = nowcast(valid_time=SLOT.isoformat(), checkpoint=str(hrit_checkpoint), source="eumdac", members=1,
                        max_age_minutes=10**9, archive_url=str(tmp_path / "archive.zarr"),
                        products_url=f"s3://{bucket}/products", return_state=True)
    out = state.result()
    assert out["status"] == "done", out["reason"]
    assert out["products"]["mean"].startswith(f"s3://{bucket}/") and out["inputs_present"] == 1
    assert any(r.name == "eumdac" for r in caplog.records) and "Bearer ***" in caplog.text  # redaction at work

    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run_id])))
    assert logs and tasks and {"nowcast", "nowcast-quicklook"} <= {a.key for a in artifacts}  # read from S3
    assert leaks(caplog.text + "\n".join(r.getMessage() for r in caplog.records), needles) == []
    assert leaks("\n".join(f"{log.name} {log.message}" for log in logs), needles) == []
    assert leaks(run.model_dump_json() + "".join(t.model_dump_json() for t in tasks), needles) == []
    assert leaks("".join(a.model_dump_json() for a in artifacts), needles) == []
    # written files: archive (attrs too), granule cache and sidecars, checkpoint card, Prefect results
    assert scan_tree(tmp_path, needles) == {}
    assert scan_tree(hrit_checkpoint, needles) == {}
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    assert not storage.is_dir() or scan_tree(storage, needles, newer_than=started) == {}
    fs = s3fs.S3FileSystem(**opts)
    objects = fs.find(f"{bucket}/products")
    assert any(o.endswith("_mean.tif") for o in objects)
    assert {o: leaks(fs.cat_file(o), needles) for o in objects if leaks(fs.cat_file(o), needles)} == {}


# ----------------------------------------------------------------------------- never in images

def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative to the build context) is left out of the context, following
    Docker's rules: patterns anchored at the root, ``**`` any number of folders, a folder's
    exclusion excludes its content, later ``!`` patterns re-include."""
    def match(pattern: str, candidate: str) -> bool:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.fullmatch(regex, candidate) is not None

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if any(match(pat, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_docker_build_context_and_image_hold_no_secret():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    secret_like = [".env", ".env.local", "prod.env", "deploy/.env", "data/archive/france-3km.zarr/zarr.json",
                   "data/cache/x.zip", ".venv/bin/python", ".git/config", "secrets/eumetsat.json",
                   "deployments/secrets/key.txt", "id_rsa", "keys/server.pem", "a/b/tls.key", ".aws/credentials",
                   ".netrc", ".pypirc", ".prefect/profiles.toml", "tests/data/sample.npz", ".qpe-cache/lut.npy"]
    kept = [p for p in secret_like if not _dockerignore_excludes(patterns, p)]
    assert kept == []
    needed = ["pyproject.toml", "constraints.txt", "README.md", "qpe_core/config.py", "flows/nowcast.py",
              "deployments/prefect.yaml", "qpe_core/assets/demo-checkpoint/weights.safetensors"]
    assert [p for p in needed if _dockerignore_excludes(patterns, p)] == []

    assert not _dockerignore_excludes(["data", "**/*.env"], "qpe_core/data.py")  # the matcher itself
    assert _dockerignore_excludes(["**/*.env", "!keep.env"], "a/b.env") and not _dockerignore_excludes(
        ["**/*.env", "!keep.env"], "keep.env")
    for bad in ("FROM x\nARG EUMETSAT_CONSUMER_SECRET\nUSER 1000", "FROM x\nENV A=1 \\\n  AWS_SECRET_ACCESS_KEY=k\n"
                "USER 1000", "FROM x\nCOPY . /app\nUSER 1000", "FROM x\nCOPY qpe_core /app"):
        with pytest.raises(AssertionError):
            check_dockerfile(bad)
    dockerfiles = sorted((ROOT / "docker").glob("Dockerfile*"))
    assert dockerfiles
    for dockerfile in dockerfiles:
        check_dockerfile(dockerfile.read_text())


def check_dockerfile(text: str) -> None:
    """No secret-looking ARG/ENV/LABEL, named sources only in COPY/ADD, a non-root USER."""
    logical = re.sub(r"\\\n", " ", text)
    instructions = [line.strip() for line in logical.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    secretish = re.compile(r"secret|passw|token|api_?key|consumer|credential|access_key|aws_|private", re.I)
    for ins in instructions:
        word, _, rest = ins.partition(" ")
        if word.upper() in ("ARG", "ENV", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*)\s*=", rest) or [rest.split()[0]]
            assert not [n for n in names if secretish.search(n)], ins
        if word.upper() in ("COPY", "ADD"):
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            assert "." not in sources and "./" not in sources, f"whole context copied: {ins}"
            assert not [s for s in sources if secretish.search(s) or fnmatch.fnmatch(s, "*.env*")], ins
        assert not re.search(r"--mount=type=secret.*\b(cp|cat|tee)\b", ins), ins
    assert any(i.upper().startswith("USER ") and "root" not in i for i in instructions)  # not running as root


# ----------------------------------------------------------------------------- no pickle

class _Boom:
    """Unpickling this calls ``open(marker, 'w')``: proof that pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_refused(tmp_path, hrit_checkpoint):
    import shutil

    import torch

    from qpe_core.training.checkpoint import load_checkpoint, load_tensors

    ck = tmp_path / "ck"
    shutil.copytree(hrit_checkpoint, ck)
    assert load_checkpoint(ck).card["kind"] == "unet"
    marker = tmp_path / "pickle-code-ran"
    state = {k: v.clone() for k, v in load_tensors(ck / "weights.safetensors").items()}  # not the mmap
    state["payload"] = _Boom(marker)
    torch.save(state, ck / "weights.safetensors")  # what a tampered or torch.save checkpoint looks like
    with pytest.raises(QpeError, match=r"refused: a pickle \(torch.save\) file.*never with pickle"):
        load_checkpoint(ck)
    (ck / "weights.safetensors").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(QpeError, match="refused"):
        load_checkpoint(ck)
    (ck / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(QpeError, match="refused: not safetensors"):
        load_checkpoint(ck)
    assert not marker.exists()


def test_no_pickle_loading_in_the_code():
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|import (c?pickle|dill|joblib|cloudpickle)\b|"
                         r"allow_pickle\s*=\s*True|weights_only\s*=\s*False|pd\.read_pickle|\.from_pickle")
    files = sorted((ROOT / "qpe_core").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py"))
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    allowed = {"qpe_core/readers/safe_npz.py"}  # the restricted unpickler itself
    assert [h for h in hits if h.split(":")[0] not in allowed] == []


def test_meteonet_npz_pickles_are_restricted(tmp_path):
    from qpe_core.readers.meteonet import read_meteonet
    from qpe_core.readers.safe_npz import UnsafeNpzError, safe_npz

    lats, lons = np.meshgrid(48.5 - 0.01 * np.arange(20), -1.0 + 0.01 * np.arange(30), indexing="ij")
    good = tmp_path / "rainfall_NW_2016_08.3.npz"
    dates = np.array([dt.datetime(2016, 8, 21, 0, 5), dt.datetime(2016, 8, 21, 0, 15)], dtype=object)
    np.savez(good, data=np.full((2, 20, 30), 50, dtype="int16"), dates=dates)
    slots = read_meteonet(good, coords=(lats, lons))
    assert [pd.Timestamp(s["time"].values) for s in slots] == [pd.Timestamp(d) for d in dates]
    # numpy 1.x wrote numpy.core.multiarray in its pickles: still readable
    old = tmp_path / "old.npz"
    with zipfile.ZipFile(old, "w") as zf, zf.open("dates.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (2,)})
        fh.write(pickle.dumps(dates, protocol=2).replace(b"numpy._core", b"numpy.core"))
    with safe_npz(old) as z:
        assert list(z["dates"]) == list(dates)

    marker = tmp_path / "pickle-code-ran"
    evil = tmp_path / "rainfall_NW_2016_09.3.npz"
    np.savez(evil, data=np.zeros((1, 20, 30), dtype="int16"), dates=np.array([_Boom(marker)], dtype=object))
    with pytest.raises(InputFileError, match="not allowed"):
        read_meteonet(evil, coords=(lats, lons))
    with safe_npz(evil) as z, pytest.raises(UnsafeNpzError):
        z["dates"]
    assert not marker.exists()


# ----------------------------------------------------------------------------- Data Store names

def test_datastore_names_never_escape_the_cache(tmp_path, monkeypatch, hrit_zip):
    """A product id (Windows-absolute with ``..``: a ``/`` cannot travel in the download URL), a
    download file name and zip members with ``..`` and absolute paths: the
    granule lands inside the cache, extraction stays inside its temporary folder, ingest works;
    a member that names no file is a clean input error."""
    import tempfile

    from qpe_core.archive import Archive
    from qpe_core.ingest import ingest_seviri
    from qpe_core.sources.datastore import DataStoreSource

    deep = tmp_path / "t" / "a" / "b" / "c"  # where "../../x" from an extraction folder would still land
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    cache = tmp_path / "work" / "cache"
    members = sorted(HRIT_DIR.iterdir())
    buf = tmp_path / "evil.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        for i, path in enumerate(members):
            name = {0: f"../../{path.name}", 1: f"/tmp/abs/{path.name}"}.get(i, path.name)
            zf.writestr(zipfile.ZipInfo(name), path.read_bytes())
    data = buf.read_bytes()
    before = {p for p in tmp_path.rglob("*")}
    with DataStoreServer(KEY, SECRET) as server:
        server.add(scan(ZERO_DEG, SLOT.to_pydatetime(), data, "C:\\evil\\..\\..\\evil-MSG2-20100119121241",
                        filename="/tmp/../../../evil.zip"))
        src = DataStoreSource(KEY, SECRET, api_url=server.url, cache=cache, slot_minutes=15, timeout=5.0)
        (path,) = src.fetch(SLOT)
    assert path.resolve().is_relative_to(cache.resolve()) and path.name == "evil-MSG2-20100119121241.zip"
    arc = Archive.create(str(tmp_path / "work" / "a.zarr"), "france-3km", HRIT_CHANNELS)
    report = ingest_seviri([path], arc, cache_dir=tmp_path / "work" / "lut")
    assert not report.failed and arc.has_slot(SLOT)
    outside = [p for p in tmp_path.rglob("*") if p not in before and not p.is_relative_to(tmp_path / "work")]
    assert outside == []
    assert not Path("/tmp/abs").exists() or not any(Path("/tmp/abs").iterdir())

    # a member whose name is only "..": no file name to extract to
    bad = cache / "dots-MSG2-SEVI-MSG15-0100-NA-20100119121241.713000000Z-NA.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr(zipfile.ZipInfo(".."), members[0].read_bytes())
    from qpe_core.readers.seviri import read_seviri

    with pytest.raises(InputFileError):
        read_seviri([bad], area="france-3km", channels=["IR_039"], cache_dir=tmp_path / "work" / "lut")
    assert [p for p in tmp_path.rglob("*") if p not in before and not p.is_relative_to(tmp_path / "work")] == []
