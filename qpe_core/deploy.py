"""Register the Prefect deployments of ``deployments/prefect.yaml`` (``qpe deploy``).

The file is the one ``prefect deploy --all`` reads, plus a ``work_pools`` list (ignored by
Prefect's CLI).  :func:`deploy` creates the missing work pools, then applies every deployment
through Prefect's Python API (:class:`prefect.deployments.runner.RunnerDeployment`): nothing is
built or pushed, the flow code is found on the worker by the file's pull steps.  Applying is
idempotent: an existing deployment is updated in place (schedules are matched by slug).

Nothing here prints or stores a secret: parameters whose name looks secret are shown as
``***``, the API URL is shown without user information, and credentials are read by the
flows from the workers' environment, never from the file.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qpe_core.errors import QpeError

DEFAULT_FILE = Path("deployments/prefect.yaml")
_SECRET = re.compile(r"secret|password|passwd|token|api_?key|consumer_key|credential|access_key", re.I)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PoolSpec(_Strict):
    name: str
    type: str = "process"
    description: str | None = None
    concurrency_limit: int | None = Field(None, ge=0)


class PoolRef(_Strict):
    name: str
    work_queue_name: str | None = None
    job_variables: dict[str, Any] = Field(default_factory=dict)


class ScheduleSpec(_Strict):
    cron: str | None = None
    interval: float | None = None  # seconds
    rrule: str | None = None
    timezone: str | None = None
    anchor_date: str | None = None
    day_or: bool | None = None
    active: bool = True
    slug: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self):
        if sum(v is not None for v in (self.cron, self.interval, self.rrule)) != 1:
            raise ValueError("a schedule needs exactly one of cron, interval, rrule")
        return self

    def describe(self) -> str:
        what = (f"cron {self.cron}" if self.cron else f"every {self.interval:g} s" if self.interval is not None
                else f"rrule {self.rrule}")
        return what + (f" ({self.timezone})" if self.timezone else "") + ("" if self.active else " [inactive]")

    def to_prefect(self) -> dict[str, Any]:
        from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

        tz = {"timezone": self.timezone} if self.timezone else {}
        if self.cron:
            sched = CronSchedule(cron=self.cron, **tz, **({"day_or": self.day_or} if self.day_or is not None else {}))
        elif self.interval is not None:
            anchor = {"anchor_date": self.anchor_date} if self.anchor_date else {}
            sched = IntervalSchedule(interval=timedelta(seconds=self.interval), **tz, **anchor)
        else:
            sched = RRuleSchedule(rrule=self.rrule, **tz)
        out: dict[str, Any] = {"schedule": sched, "active": self.active}
        if self.slug:
            out["slug"] = self.slug
        if self.parameters:
            out["parameters"] = self.parameters
        return out


class ConcurrencySpec(_Strict):
    limit: int = Field(ge=1)
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = "ENQUEUE"
    grace_period_seconds: int | None = None


class DeploymentSpec(_Strict):
    name: str
    entrypoint: str
    description: str | None = None
    version: str | None = None
    tags: list[str] = Field(default_factory=list)
    work_pool: PoolRef
    parameters: dict[str, Any] = Field(default_factory=dict)
    schedules: list[ScheduleSpec] | None = None  # None: keep the server's; []: remove them
    concurrency_limit: int | ConcurrencySpec | None = None
    paused: bool | None = None
    enforce_parameter_schema: bool = True
    pull: list[dict[str, Any]] | None = None  # None: the file's pull steps

    @property
    def concurrency(self) -> ConcurrencySpec | None:
        c = self.concurrency_limit
        return ConcurrencySpec(limit=c) if isinstance(c, int) else c


class ProjectSpec(_Strict):
    name: str | None = None
    prefect_version: str | None = Field(None, alias="prefect-version")
    work_pools: list[PoolSpec] = Field(default_factory=list)
    pull: list[dict[str, Any]] = Field(default_factory=list)
    deployments: list[DeploymentSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self):
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate deployment names in {names}")
        return self

    def pools(self) -> list[PoolSpec]:
        """The declared pools, plus any pool a deployment names (type process)."""
        pools = {p.name: p for p in self.work_pools}
        for d in self.deployments:
            pools.setdefault(d.work_pool.name, PoolSpec(name=d.work_pool.name))
        return list(pools.values())


def load_project(path: str | Path = DEFAULT_FILE, names: list[str] | None = None) -> ProjectSpec:
    """Read and validate a prefect.yaml (only the deployments ``names`` when given); errors name
    the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise QpeError(f"deployment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise QpeError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise QpeError(f"{path}: expected a mapping at the top level")
    for unsupported in ("build", "push"):
        if raw.get(unsupported):
            raise QpeError(f"{path}: `{unsupported}` steps are not supported by qpe deploy (nothing is built "
                           "or pushed); use `prefect deploy`")
    try:
        spec = ProjectSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise QpeError(f"{path}: {problems}") from None
    if names:
        missing = sorted(set(names) - {d.name for d in spec.deployments})
        if missing:
            raise QpeError(f"no deployment named {', '.join(missing)} in {path}")
        spec = spec.model_copy(update={"deployments": [d for d in spec.deployments if d.name in names]})
    return spec


def redact(value: Any, key: str = "") -> Any:
    """``value`` with every entry whose name looks secret replaced by ``***``."""
    if key and _SECRET.search(key):
        return "***"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def safe_url(url: str | None) -> str:
    """An API URL without user, password or query string (which may carry tokens)."""
    if not url:
        return "(not set: ephemeral local server)"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _resolve_entrypoint(entrypoint: str, base: Path) -> Path:
    """The file of ``path/to/file.py:flow``: relative to the working directory, the yaml's folder
    or its parent (the repository root when the yaml lives in deployments/)."""
    file = entrypoint.rsplit(":", 1)[0]
    for root in (Path.cwd(), base, base.parent):
        if (root / file).is_file():
            return root / file
    raise QpeError(f"entrypoint {entrypoint}: {file} not found (run from the repository root)")


def plan(spec: ProjectSpec, path: str | Path = DEFAULT_FILE) -> list[dict[str, Any]]:
    """What :func:`deploy` would register: one row per deployment (parameters redacted).
    Loads each flow from its entrypoint (checks that it exists); contacts no server."""
    from prefect.flows import load_flow_from_entrypoint

    base = Path(path).resolve().parent
    rows = []
    for d in spec.deployments:
        file = _resolve_entrypoint(d.entrypoint, base)
        flow = load_flow_from_entrypoint(f"{file}:{d.entrypoint.rsplit(':', 1)[1]}")
        conc = d.concurrency
        rows.append({
            "deployment": f"{flow.name}/{d.name}", "flow": flow.name, "entrypoint": d.entrypoint,
            "work_pool": d.work_pool.name, "schedules": [s.describe() for s in d.schedules or []],
            "concurrency": f"{conc.limit} ({conc.collision_strategy})" if conc else "-",
            "parameters": redact(d.parameters), "paused": bool(d.paused),
        })
    return rows


@dataclass
class DeployResult:
    pools: list[tuple[str, str, str]]  # (name, type, "created" | "exists" | "exists as <type>")
    deployments: list[dict[str, Any]]  # plan rows + id and action ("created" | "updated")
    automations: list[dict[str, Any]] = field(default_factory=list)  # qpe_core.automations rows
    warning: str | None = None  # automations skipped (their notification block is missing)


class _PullSteps:
    """Minimal runner storage that only hands the file's pull steps to the deployment."""

    def __init__(self, steps: list[dict[str, Any]]):
        self.steps = steps
        self._base = Path.cwd()

    def set_base_path(self, path: Path) -> None:
        self._base = path

    @property
    def destination(self) -> Path:
        return self._base

    @property
    def pull_interval(self) -> int:
        return 60

    async def pull_code(self) -> None:
        return None

    def to_pull_step(self) -> list[dict[str, Any]]:
        return self.steps

    def __eq__(self, other: Any) -> bool:
        return self.steps == getattr(other, "steps", None)


def ensure_work_pools(pools: list[PoolSpec]) -> list[tuple[str, str, str]]:
    """Create each missing pool with its worker type's default job template; existing pools
    are left as they are (a different type is reported, not changed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.base import BaseWorker

    done = []
    with get_client(sync_client=True) as client:
        for p in pools:
            try:
                pool = client.read_work_pool(p.name)
                done.append((p.name, pool.type, "exists" if pool.type == p.type else f"exists as {pool.type}"))
                continue
            except ObjectNotFound:
                pass
            worker = BaseWorker.get_worker_class_from_type(p.type)
            if worker is None:
                raise QpeError(f"work pool {p.name}: no worker of type {p.type!r} installed "
                               f"(process is built in; docker needs prefect-docker)")
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=p.name, type=p.type, description=p.description,
                    base_job_template=worker.get_default_base_job_template(),
                    concurrency_limit=p.concurrency_limit))
                done.append((p.name, p.type, "created"))
            except ObjectAlreadyExists:  # created concurrently
                done.append((p.name, p.type, "exists"))
    return done


def deploy(path: str | Path = DEFAULT_FILE, names: list[str] | None = None) -> DeployResult:
    """Create missing work pools, then create or update every deployment of the file (or only
    ``names``) against the configured Prefect API, then the alert automations of the
    ``automations.yaml`` next to it (:mod:`qpe_core.automations`; skipped with a warning when their
    notification block does not exist)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import ObjectNotFound
    from prefect.flows import load_flow_from_entrypoint

    from qpe_core.automations import apply_automations, automations_file, load_automations

    spec = load_project(path, names)
    alerts = automations_file(path)
    if alerts:
        load_automations(alerts)  # a mistake in the alerts file stops everything before anything is sent
    chosen = spec.deployments
    rows = plan(spec, path)
    pools = ensure_work_pools(spec.pools())
    base = Path(path).resolve().parent
    for d, row in zip(chosen, rows):
        flow = load_flow_from_entrypoint(f"{_resolve_entrypoint(d.entrypoint, base)}:"
                                         f"{d.entrypoint.rsplit(':', 1)[1]}")
        conc = d.concurrency
        options = None
        if conc is not None:
            options = {"collision_strategy": conc.collision_strategy}
            if conc.grace_period_seconds is not None:
                options["grace_period_seconds"] = conc.grace_period_seconds
        kwargs = dict(description=d.description, version=d.version, paused=d.paused,
                      work_queue_name=d.work_pool.work_queue_name)
        dep = RunnerDeployment(
            name=d.name, flow_name=flow.name, entrypoint=d.entrypoint, tags=d.tags, parameters=d.parameters,
            work_pool_name=d.work_pool.name, job_variables=d.work_pool.job_variables,
            enforce_parameter_schema=d.enforce_parameter_schema,
            concurrency_limit=conc.limit if conc else None, concurrency_options=options,
            storage=_PullSteps(spec.pull if d.pull is None else d.pull),
            **{k: v for k, v in kwargs.items() if v is not None})
        dep._set_defaults_from_flow(flow)
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(f"{flow.name}/{d.name}")
                row["action"] = "updated"
            except ObjectNotFound:
                row["action"] = "created"
            schedules = [s.to_prefect() for s in d.schedules or []]
            dep_id = dep.apply(schedules=schedules or None)
            if d.schedules is not None and not schedules:  # `schedules: []` in the file: none wanted
                for sched in client.read_deployment(dep_id).schedules:
                    client.delete_deployment_schedule(dep_id, sched.id)
        row["id"] = str(dep_id)
    automations, warning = apply_automations(alerts) if alerts else ([], None)
    return DeployResult(pools, rows, automations, warning)
