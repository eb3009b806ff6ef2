"""`qpe deploy` against a real Prefect test server, and the late-run guard of the nowcast flow."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_qpe

from qpe_core.deploy import load_project, redact, safe_url
from qpe_core.errors import QpeError
from qpe_core.late_runs import decide

YAML = ROOT / "deployments" / "prefect.yaml"


# ----------------------------------------------------------------------------- late-run guard (pure)
def test_late_guard_decisions():
    t = pd.Timestamp("2024-06-01T12:00")
    on_time = decide(t, t + pd.Timedelta(minutes=3), [t + pd.Timedelta(minutes=15)])
    assert on_time.run and not on_time.reason and on_time.late_minutes == 3
    # one period late is still on time; newer runs that are not yet due do not count
    assert decide(t, t + pd.Timedelta(minutes=15), [t + pd.Timedelta(minutes=15)]).run
    assert decide(t, t + pd.Timedelta(minutes=20), [t + pd.Timedelta(minutes=30)]).run
    # after an outage: a newer run is waiting -> skip at once, it takes the newest slot
    late = decide(t, t + pd.Timedelta(minutes=65), [t + pd.Timedelta(minutes=m) for m in (15, 30, 45, 60)])
    assert late.skip and late.late_minutes == 65
    assert late.reason == ("late: scheduled 2024-06-01T12:00Z, started 65 min late; "
                           "the run scheduled 2024-06-01T13:00Z takes the newest slot")
    # late, but nobody newer is waiting (cancelled by CANCEL_NEW): process the newest slot
    alone = decide(t, t + pd.Timedelta(minutes=65), [t - pd.Timedelta(minutes=15)])
    assert alone.run and "no newer run waiting, processing the newest slot" in alone.reason
    # aware datetimes are converted; ad-hoc runs (no schedule) always run
    aware = dt.datetime(2024, 6, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert decide(aware, t + pd.Timedelta(minutes=40), ["2024-06-01T12:30Z"]).skip
    assert decide(None, t).run
    assert decide(t, t + pd.Timedelta(minutes=40), [t + pd.Timedelta(minutes=30)], late_after_minutes=60).run


# ----------------------------------------------------------------------------- deployment file (pure)
def test_project_file_and_redaction(tmp_path):
    spec = load_project(YAML)
    deps = {d.name: d for d in spec.deployments}
    assert {"simulate-archive", "ingest-files", "nowcast", "backfill", "train"} <= set(deps)
    assert [(p.name, p.type) for p in spec.pools()] == [("cpu", "process"), ("gpu", "process")]
    now = deps["nowcast"]
    assert now.work_pool.name == "gpu" and now.concurrency.limit == 1
    assert now.concurrency.collision_strategy == "CANCEL_NEW"
    assert [(s.cron, s.timezone) for s in now.schedules] == [("*/15 * * * *", "UTC")]
    assert deps["backfill"].work_pool.name == deps["train"].work_pool.name == "gpu"
    assert deps["simulate-archive"].work_pool.name == deps["ingest-files"].work_pool.name == "cpu"
    recal = deps["recalibrate"]  # daily, on the cpu pool, never onto the trained checkpoint
    assert recal.work_pool.name == "cpu" and [(s.cron, s.timezone) for s in recal.schedules] == [("30 3 * * *", "UTC")]
    assert recal.parameters["only"] == "dry" and recal.parameters["out"] != recal.parameters["checkpoint"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: flows/nowcast.py:nowcast\n    work_pol: {name: cpu}\n")
    with pytest.raises(QpeError, match=r"bad.yaml: deployments.0.work_pool: Field required.*work_pol"):
        load_project(bad)
    with pytest.raises(QpeError, match="no deployment named nope"):
        load_project(YAML, ["nope"])

    assert redact({"checkpoint": "a", "api_token": "t", "nested": {"consumer_secret": "s", "n": [1]}}) == \
        {"checkpoint": "a", "api_token": "***", "nested": {"consumer_secret": "***", "n": [1]}}
    assert safe_url("https://user:pw@api.example.org:4200/api?key=abc") == "https://api.example.org:4200/api"


def test_dry_run_prints_the_plan_without_secrets(tmp_path):
    spec = yaml.safe_load(YAML.read_text())
    spec["deployments"][0]["parameters"]["api_token"] = "tok-very-secret"
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = run_qpe("deploy", "--file", str(path), "--dry-run",
                  env={"PREFECT_API_URL": "http://alice:pw-very-secret@127.0.0.1:9/api",
                       "EUMETSAT_CONSUMER_SECRET": "eum-very-secret", "COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    assert "very-secret" not in res.stdout + res.stderr and "***" in res.stdout
    assert "http://127.0.0.1:9/api" in res.stdout and "(dry run)" in res.stdout
    for name in ("nowcast/nowcast", "backfill/backfill", "train/train", "cron */15 * * * * (UTC)",
                 "1 (CANCEL_NEW)", "created if missing"):
        assert name in res.stdout


# ----------------------------------------------------------------------------- against the server
def _server_state():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deps = {d.name: d for d in client.read_deployments()}
        pools = {p.name: p for p in client.read_work_pools()}
    return deps, pools


def test_qpe_deploy_registers_idempotently_and_late_runs_skip(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "300"}
    first = run_qpe("deploy", "--file", str(YAML), env=env)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    deps, pools = _server_state()
    assert pools["cpu"].type == pools["gpu"].type == "process"
    assert {"simulate-archive", "ingest-files", "nowcast", "backfill", "train"} <= set(deps)
    now = deps["nowcast"]
    assert now.work_pool_name == "gpu" and deps["train"].work_pool_name == "gpu"
    assert deps["backfill"].work_pool_name == "gpu" and deps["ingest-files"].work_pool_name == "cpu"
    assert len(now.schedules) == 1
    sched = now.schedules[0]
    assert sched.schedule.cron == "*/15 * * * *" and sched.schedule.timezone == "UTC" and sched.active
    assert now.global_concurrency_limit.limit == 1
    assert now.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert now.entrypoint == "flows/nowcast.py:nowcast"
    assert now.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                               {"directory": "{{ $QPE_HOME }}"}}]
    assert now.parameters["source"] == "eumdac" and deps["train"].parameters["device"] == "cuda"
    assert not deps["train"].schedules

    again = run_qpe("deploy", "--file", str(YAML), env=env)
    assert again.returncode == 0, again.stderr
    assert "updated" in again.stdout and "exists" in again.stdout
    deps2, pools2 = _server_state()
    assert set(deps2) == set(deps) and set(pools2) == set(pools)
    assert {k: d.id for k, d in deps2.items()} == {k: d.id for k, d in deps.items()}
    assert [(s.id, s.schedule.cron) for s in deps2["nowcast"].schedules] == [(sched.id, "*/15 * * * *")]
    assert deps2["nowcast"].global_concurrency_limit.limit == 1

    # a run scheduled an hour ago, with a newer due run still waiting, exits at once as skipped
    from prefect.client.schemas.objects import StateType
    from prefect.flow_engine import run_flow
    from prefect.states import Cancelled, Scheduled

    from flows.nowcast import nowcast
    from qpe_core.late_runs import newer_waiting_runs

    utc_now = dt.datetime.now(dt.timezone.utc)
    with get_client(sync_client=True) as client:
        old = client.create_flow_run_from_deployment(
            now.id, state=Scheduled(scheduled_time=utc_now - dt.timedelta(minutes=60)))
        new = client.create_flow_run_from_deployment(
            now.id, state=Scheduled(scheduled_time=utc_now - dt.timedelta(minutes=5)))
    out = run_flow(nowcast, flow_run=old, parameters=old.parameters)
    assert out["status"] == "skipped" and out["reason"].startswith("late: scheduled ")
    assert "takes the newest slot" in out["reason"] and out["products"] == {}
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(old.id).state.type == StateType.COMPLETED
        assert client.read_flow_run(new.id).state.type == StateType.SCHEDULED
        found = newer_waiting_runs(now.id, utc_now - dt.timedelta(minutes=60), utc_now)
        assert len(found) == 1 and abs((found[0] - pd.Timestamp(new.expected_start_time).tz_convert(None))
                                       .total_seconds()) < 1
        client.set_flow_run_state(new.id, Cancelled(), force=True)
        client.delete_flow_run(old.id)
        client.delete_flow_run(new.id)
    assert newer_waiting_runs(now.id, utc_now - dt.timedelta(minutes=60), utc_now) == []
