"""Alert automations (deployments/automations.yaml) against a real Prefect test server: applied
idempotently by name, and firing for real: the server's trigger and action services send the
notification through a Custom Webhook block to a local HTTP receiver."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import yaml
from conftest import ROOT, run_qpe
from local_http import BackgroundHTTPServer

from qpe_core import automations as alerts
from qpe_core.errors import QpeError

YAML = ROOT / "deployments" / "automations.yaml"
BLOCK = "qpe-test-alerts"  # a Custom Webhook block (bare name: type custom-webhook)


class Receiver(BackgroundHTTPServer):
    """Records every JSON POST (with its arrival time) of the webhook notifications."""

    class handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with self.owner.lock:
                self.owner.posts.append({**body, "path": self.path, "at": time.monotonic()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    def __init__(self):
        self.posts: list[dict] = []
        self.lock = threading.Lock()

    def wait_for(self, text: str, timeout: float) -> dict | None:
        """The first POST whose subject contains ``text``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                hit = next((p for p in self.posts if text in p.get("subject", "")), None)
            if hit:
                return hit
            time.sleep(0.2)
        return None


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as rec:
        yield rec


@pytest.fixture
def alert_block(prefect_server, receiver):
    """The webhook block the automations send through (what the operator creates), removed after."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    CustomWebhookNotificationBlock(name="qpe test", url=f"{receiver.url}/hook",
                                   json_data={"subject": "{{subject}}", "body": "{{body}}", "name": "{{name}}"}
                                   ).save(BLOCK, overwrite=True)
    with receiver.lock:
        receiver.posts.clear()
    yield BLOCK
    _delete_qpe_automations()
    CustomWebhookNotificationBlock.delete(BLOCK)


def _delete_qpe_automations():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for a in client.read_automations():
            if a.name.startswith("qpe-"):
                client.delete_automation(a.id)


def _server_automations(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(name)


def _alerts_file(tmp_path, names=None, **trigger_updates):
    """A copy of the shipped automations.yaml (only ``names`` when given), with ``trigger_updates``
    {automation name: {field: value}} applied."""
    raw = yaml.safe_load(YAML.read_text())
    raw["automations"] = [a for a in raw["automations"] if names is None or a["name"] in names]
    for a in raw["automations"]:
        a["trigger"].update(trigger_updates.get(a["name"].replace("-", "_"), {}))
    path = tmp_path / "automations.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- the file (pure)
def test_shipped_file_and_dry_run(tmp_path):
    specs = {s.name: s for s in alerts.load_automations(YAML)}
    assert set(specs) == {"qpe-nowcast-failed", "qpe-nowcast-stalled", "qpe-input-missing",
                          "qpe-verification-degraded"}
    stalled = specs["qpe-nowcast-stalled"].trigger
    assert stalled.posture == "Proactive" and stalled.within == 2700
    assert stalled.expect == ["prefect.flow-run.Completed"]
    auto = alerts.build(specs["qpe-nowcast-stalled"], "00000000-0000-0000-0000-000000000001")
    assert auto.trigger.posture.value == "Proactive" and auto.trigger.within.total_seconds() == 2700
    assert auto.trigger.match.root == {"prefect.resource.id": "prefect.flow-run.*"}
    assert [r.root for r in auto.trigger.match_related] == [
        {"prefect.resource.role": "flow", "prefect.resource.name": "nowcast"},
        {"prefect.resource.role": "deployment", "prefect.resource.name": "nowcast"}]
    assert auto.actions[0].type == "send-notification"
    assert alerts.split_block("qpe-alerts") == ("custom-webhook", "qpe-alerts")
    assert alerts.split_block("slack-webhook/ops") == ("slack-webhook", "ops")

    bad = tmp_path / "automations.yaml"
    bad.write_text("automations:\n  - name: x\n    trigger: {posture: Proactive, expect: [a], within: 5}\n")
    with pytest.raises(QpeError, match=r"automations.yaml: automations.0.trigger: .*within >= 10"):
        alerts.load_automations(bad)

    res = run_qpe("deploy", "--dry-run", env={"PREFECT_API_URL": "http://127.0.0.1:9/api", "COLUMNS": "400",
                                              "QPE_ALERT_BLOCK": "ops-pager"})
    assert res.returncode == 0, res.stderr
    for text in ("qpe-nowcast-failed", "qpe-nowcast-stalled", "qpe-input-missing", "qpe-verification-degraded",
                 "Proactive: fewer than 1 prefect.flow-run.Completed within 2700 s",
                 "send-notification via custom-webhook/ops-pager"):
        assert text in res.stdout


# ----------------------------------------------------------------------------- against the server
def test_apply_is_idempotent_by_name(prefect_server, alert_block, tmp_path):
    path = _alerts_file(tmp_path)
    rows, warning = alerts.apply_automations(path, alert_block)
    assert warning is None and {r["status"] for r in rows} == {"created"}
    ids = {r["automation"]: r["id"] for r in rows}

    rows, _ = alerts.apply_automations(path, alert_block)
    assert {r["status"] for r in rows} == {"unchanged"} and {r["automation"]: r["id"] for r in rows} == ids

    # the stall window changes in the file: that one automation is updated in place
    path = _alerts_file(tmp_path, qpe_nowcast_stalled={"within": 1800})
    rows, _ = alerts.apply_automations(path, alert_block)
    status = {r["automation"]: r["status"] for r in rows}
    assert status.pop("qpe-nowcast-stalled") == "updated" and set(status.values()) == {"unchanged"}
    assert {r["automation"]: r["id"] for r in rows} == ids
    for name, auto_id in ids.items():
        found = _server_automations(name)
        assert [str(a.id) for a in found] == [auto_id]
    stalled = _server_automations("qpe-nowcast-stalled")[0]
    assert stalled.trigger.within.total_seconds() == 1800 and stalled.trigger.posture.value == "Proactive"
    assert stalled.actions[0].block_document_id == alerts.find_block(alert_block)

    # a second automation of the same name (made by hand): removed, one per name
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_automation(alerts.build(alerts.load_automations(path)[0], alerts.find_block(alert_block)))
    assert len(_server_automations("qpe-nowcast-failed")) == 2
    rows, _ = alerts.apply_automations(path, alert_block)
    assert {r["automation"]: r["status"] for r in rows}["qpe-nowcast-failed"] == "unchanged (1 duplicate(s) removed)"
    assert [str(a.id) for a in _server_automations("qpe-nowcast-failed")] == [ids["qpe-nowcast-failed"]]

    # the block does not exist: nothing is sent, a warning names it
    rows, warning = alerts.apply_automations(path, "no-such-block")
    assert {r["status"] for r in rows} == {"skipped"}
    assert "custom-webhook/no-such-block not found" in warning and "QPE_ALERT_BLOCK" in warning


def test_qpe_deploy_applies_automations(prefect_server, alert_block, tmp_path):
    """`qpe deploy` end to end with a one-deployment file (its own name: the shared server's other
    deployments are not touched): automations created, then skipped with a warning without block."""
    from prefect.settings import PREFECT_API_URL

    deployment = {"name": "alert-test", "entrypoint": "flows/verify.py:live_verification", "work_pool": {"name": "cpu"}}
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump({"name": "qpe-alert-test", "deployments": [deployment]}))
    _alerts_file(tmp_path, ["qpe-nowcast-failed", "qpe-verification-degraded"])
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "300", "QPE_ALERT_BLOCK": alert_block}
    res = run_qpe("deploy", "--file", str(tmp_path / "prefect.yaml"), env=env)
    assert res.returncode == 0, res.stderr
    assert "qpe-nowcast-failed" in res.stdout and "custom-webhook/qpe-test-alerts" in res.stdout
    assert len(_server_automations("qpe-nowcast-failed")) == len(_server_automations("qpe-verification-degraded")) == 1
    _delete_qpe_automations()
    res = run_qpe("deploy", "--file", str(tmp_path / "prefect.yaml"), env=env | {"QPE_ALERT_BLOCK": "absent"})
    assert res.returncode == 0, res.stderr
    assert "skipped" in res.stdout and "custom-webhook/absent not found" in " ".join(res.stderr.split())
    assert _server_automations("qpe-nowcast-failed") == []


def test_failed_nowcast_and_qpe_events_send_notifications(prefect_server, alert_block, receiver, tmp_path):
    from prefect import flow
    from prefect.events import emit_event

    from qpe_core.events import cycle_events
    from qpe_core.live_verification import verification_events
    from qpe_core.nowcast import CycleResult

    rows, _ = alerts.apply_automations(_alerts_file(tmp_path), alert_block)
    assert len(rows) == 4
    time.sleep(1.0)  # the trigger service loads new automations as they are created; margin

    @flow(name="nowcast", retries=0)
    def nowcast_that_fails():
        raise RuntimeError("simulated nowcast failure")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        nowcast_that_fails()
    got = receiver.wait_for("nowcast run", timeout=60)
    assert got is not None, f"no failure notification; received {receiver.posts}"
    print(f"failure notification {got['at'] - t0:.1f} s after the run started: {got}")
    assert got["path"] == "/hook" and "Failed" in got["subject"] and "simulated nowcast failure" in got["body"]
    assert got["name"] == "qpe test"

    # a cycle with two missing inputs: one alert (within 600 s); live skill below the threshold: one alert
    res = CycleResult("2024-06-01T12:00Z", "done", area="france-3km", missing_inputs=["2024-06-01T11:45Z",
                                                                                       "2024-06-01T11:30Z"])
    scores = {"now": "2024-06-01T12:10Z", "windows": {"24h": {"slots": 40, "CSI_1": 0.08, "CRPS": 0.4}}}
    complete = CycleResult("2024-06-01T11:45Z", "done", area="france-3km")  # no missing input: no alert
    specs = [s for s in cycle_events(complete, "ckpt") + cycle_events(res, "ckpt")
             if s["event"] == "qpe.product.published"]
    specs += verification_events(scores, "france-3km", min_csi=0.2, max_crps=0.3)
    assert [s["event"] for s in specs] == ["qpe.product.published"] * 2 + ["qpe.verification.scored",
                                                                           "qpe.verification.degraded"]
    t1 = time.monotonic()
    for spec in specs:
        emit_event(**spec)
    missing = receiver.wait_for("SEVIRI input(s) missing", timeout=60)
    degraded = receiver.wait_for("live verification degraded", timeout=60)
    assert missing is not None and degraded is not None, receiver.posts
    print(f"missing-input notification after {missing['at'] - t1:.1f} s, degraded after {degraded['at'] - t1:.1f} s")
    assert "2024-06-01T12:00Z made with 2 SEVIRI input(s) missing" in missing["subject"]
    assert "2024-06-01T11:45Z" in " ".join(missing["body"].split())
    assert "france-3km" in degraded["subject"]
    assert "CSI 1 mm/h 0.080 < 0.2; CRPS 0.400 mm/h > 0.3" in degraded["body"]
    time.sleep(3.0)  # the complete cycle (11:45) was not alerted
    with receiver.lock:
        assert sum("SEVIRI input" in p["subject"] for p in receiver.posts) == 1


def test_stalled_nowcast_schedule_sends_notification(prefect_server, alert_block, receiver, tmp_path):
    """No completed nowcast run for a (shortened, 10 s) window: the proactive automation fires."""
    path = _alerts_file(tmp_path, ["qpe-nowcast-stalled"], qpe_nowcast_stalled={"within": 10})
    t0 = time.monotonic()
    rows, _ = alerts.apply_automations(path, alert_block)
    assert [r["status"] for r in rows] == ["created"]
    got = receiver.wait_for("no completed nowcast run", timeout=60)
    assert got is not None, f"no stall notification; received {receiver.posts}"
    waited = got["at"] - t0
    print(f"stall notification {waited:.1f} s after the automation was created: {got}")
    assert waited >= 9.5  # not before the window is over
    assert "0:00:10" in got["subject"] and "qpe-nowcast-stalled" in got["body"]


def test_completed_nowcast_runs_keep_the_stall_alert_quiet(prefect_server, alert_block, receiver, tmp_path):
    """Real runs of a deployment of the flow `nowcast` (its own name, here) completing every ~2 s keep
    the proactive automation (10 s window) quiet; once they stop, it fires: the flow / deployment
    match works on Prefect's own flow-run events."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    @flow(name="nowcast")
    def quick_nowcast():
        return "done"

    with get_client(sync_client=True) as client:
        dep_id = client.create_deployment(flow_id=client.create_flow_from_name("nowcast"), name="qpe-alert-probe")
    try:
        path = _alerts_file(tmp_path, ["qpe-nowcast-stalled"],
                            qpe_nowcast_stalled={"within": 10, "deployment": "qpe-alert-probe"})
        alerts.apply_automations(path, alert_block)
        t0, runs = time.monotonic(), 0
        while time.monotonic() - t0 < 25:
            with get_client(sync_client=True) as client:
                run = client.create_flow_run_from_deployment(dep_id)
            assert run_flow(quick_nowcast, flow_run=run) == "done"
            runs += 1
            time.sleep(2.0)
        quiet = time.monotonic() - t0
        assert receiver.wait_for("no completed nowcast run", timeout=0.1) is None, receiver.posts
        t1 = time.monotonic()
        got = receiver.wait_for("no completed nowcast run", timeout=45)
        assert got is not None, "no stall notification after the runs stopped"
        print(f"{runs} completed runs in {quiet:.0f} s: no alert; alert {got['at'] - t1:.1f} s after the last run")
        # consecutive 10 s windows, each judged up to 5 s late (the server's proactive granularity):
        # the first window without a completed run ends 10-20 s after the last run
        assert 8 <= got["at"] - t1 <= 2 * 10 + 2 * 5 + 5
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(dep_id)
