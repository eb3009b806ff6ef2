"""Prefect events of the operational cycle: what another deployment or an automation can react to.

* ``qpe.product.published``: one per slot whose products were written (nowcast and backfill).
  Resource ``qpe.product.<area>.<slot>`` with labels ``qpe.area``, ``qpe.slot`` (ISO UTC),
  ``qpe.model`` (the checkpoint's kind) and ``qpe.missing_inputs`` (the count, as text: trigger
  matching sees labels, not payloads); payload: slot, area, model kind and card path, the product
  URLs (COGs, quick-look, Zarr cube), the cycle's missing-input count and slots, members, rain area
  fraction and largest rate (mm/h).
* ``qpe.input.missing``: one per SEVIRI input slot missing from a cycle's temporal stack. Resource
  ``qpe.input.seviri.<area>.<slot>``; payload: the slot it was needed for.

:func:`cycle_events` builds the events (keyword arguments of :func:`prefect.events.emit_event`)
from a :class:`~qpe_core.nowcast.CycleResult`; the flows emit them. Example trigger (a deployment
run for every new France product), in ``deployments/prefect.yaml``::

    triggers:
      - type: event
        expect: ["qpe.product.published"]
        match: {"qpe.area": "france-3km"}
        parameters: {"slot": "{{ event.resource['qpe.slot'] }}"}
"""

from __future__ import annotations

import math

PRODUCT_PUBLISHED = "qpe.product.published"
INPUT_MISSING = "qpe.input.missing"


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def cycle_events(res, checkpoint: str) -> list[dict]:
    """Events of one cycle (module docstring): a published product when it is done, one event per
    missing input slot whatever the cycle's status."""
    out = []
    if res.status == "done":
        out.append({"event": PRODUCT_PUBLISHED,
                    "resource": {"prefect.resource.id": f"qpe.product.{res.area}.{res.slot}",
                                 "prefect.resource.name": f"QPE {res.area} {res.slot}",
                                 "qpe.area": res.area, "qpe.slot": res.slot, "qpe.model": res.model_kind,
                                 "qpe.missing_inputs": str(len(res.missing_inputs))},
                    "payload": {"slot": res.slot, "area": res.area, "model_kind": res.model_kind,
                                "model_card": str(checkpoint), "products": dict(res.products),
                                "missing_inputs": len(res.missing_inputs), "missing_slots": list(res.missing_inputs),
                                "members": res.members, "rain_area_fraction": _num(res.rain_area_fraction),
                                "max_rate_mm_h": _num(res.max_rate_mm_h)}})
    for t in res.missing_inputs:
        out.append({"event": INPUT_MISSING,
                    "resource": {"prefect.resource.id": f"qpe.input.seviri.{res.area}.{t}",
                                 "qpe.area": res.area, "qpe.slot": t},
                    "payload": {"slot": t, "for_slot": res.slot, "cycle_status": res.status}})
    return out
