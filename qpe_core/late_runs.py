"""Late scheduled nowcast runs must not pile up.

The nowcast deployment runs every 15 minutes with a deployment concurrency limit of 1
(``CANCEL_NEW``).  After a worker outage the queued runs start late, one after the other or
all at once.  The cycle itself already never works on the slot of a run's *scheduled* time: a
run without ``valid_time`` takes the newest complete slot at its *actual* start
(:func:`qpe_core.nowcast.newest_slot`), and stale explicit slots are refused
(:func:`qpe_core.nowcast.check_fresh`).  This module adds the missing guard:

* a run that starts less than one schedule period after its scheduled time runs normally;
* a run that starts later than that exits at once as ``skipped`` ("late") when a *newer* run
  of the same deployment is already due and still waiting (Scheduled / Late /
  AwaitingConcurrencySlot): that newer run will take the newest slot, so this one does no
  work at all (no checkpoint load, no download);
* a late run with no newer waiting run (the others were cancelled by the concurrency limit,
  or the query failed) processes the newest slot, never its scheduled one.

:func:`decide` is pure and unit-tested; :func:`newer_waiting_runs` asks the Prefect API;
:func:`guard_current_run` combines both inside a flow run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from qpe_core.timeutil import iso, to_utc


@dataclass(frozen=True)
class LateDecision:
    """What a (possibly late) scheduled run should do."""

    run: bool  # False: exit at once as skipped
    late_minutes: float = 0.0
    reason: str = ""

    @property
    def skip(self) -> bool:
        return not self.run


def decide(scheduled, now, newer_waiting: Sequence = (), period_minutes: int = 15,
           late_after_minutes: float | None = None) -> LateDecision:
    """Decision for a run scheduled at ``scheduled`` that starts at ``now`` (UTC).

    ``newer_waiting``: scheduled times of other runs of the same deployment that are due
    (scheduled after this one, not after ``now``) and not yet started.  A run is late when it
    starts more than ``late_after_minutes`` (default: one schedule period) after its time.
    ``scheduled=None`` (an ad-hoc run, not from a schedule) always runs."""
    if scheduled is None:
        return LateDecision(True)
    scheduled, now = to_utc(scheduled), to_utc(now)
    late = (now - scheduled) / pd.Timedelta(minutes=1)
    limit = period_minutes if late_after_minutes is None else late_after_minutes
    if late <= limit:
        return LateDecision(True, late)
    newer = sorted(t for t in (to_utc(x) for x in newer_waiting) if scheduled < t <= now)
    if newer:
        return LateDecision(False, late, f"late: scheduled {iso(scheduled)}, started {late:.0f} min late; "
                                         f"the run scheduled {iso(newer[-1])} takes the newest slot")
    return LateDecision(True, late, f"late: scheduled {iso(scheduled)}, started {late:.0f} min late; "
                                    "no newer run waiting, processing the newest slot")


def newer_waiting_runs(deployment_id, scheduled, now, exclude_id=None) -> list[pd.Timestamp]:
    """Scheduled times of the runs of ``deployment_id`` due in (``scheduled``, ``now``] that
    have not started yet (state type SCHEDULED: Scheduled, Late, AwaitingConcurrencySlot)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId,
                                                FlowRunFilterExpectedStartTime, FlowRunFilterId,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    after, before = to_utc(scheduled).tz_localize("UTC"), to_utc(now).tz_localize("UTC")
    flt = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        expected_start_time=FlowRunFilterExpectedStartTime(after_=after.to_pydatetime(),
                                                           before_=before.to_pydatetime()),
        id=FlowRunFilterId(not_any_=[exclude_id]) if exclude_id is not None else None,
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=flt, limit=200)
    return [to_utc(r.expected_start_time) for r in runs
            if r.expected_start_time is not None and to_utc(r.expected_start_time) > to_utc(scheduled)]


def guard_current_run(period_minutes: int = 15, now=None) -> LateDecision:
    """The decision for the flow run in progress.  Runs that do not come from a deployment
    schedule, and every failure to ask the API, fall back to running (newest slot)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is None or run.deployment_id is None or run.expected_start_time is None:
        return LateDecision(True)
    now = to_utc(now) if now is not None else pd.Timestamp.now("UTC").tz_localize(None)
    scheduled = to_utc(run.expected_start_time)
    first = decide(scheduled, now, (), period_minutes)
    if first.late_minutes <= period_minutes:
        return first
    try:
        newer = newer_waiting_runs(run.deployment_id, scheduled, now, exclude_id=run.id)
    except Exception as exc:  # the guard must never stop a cycle
        return LateDecision(True, first.late_minutes, f"{first.reason} (could not list newer runs: {exc})")
    return decide(scheduled, now, newer, period_minutes)
