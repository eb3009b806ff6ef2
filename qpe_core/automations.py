"""Alerts as Prefect automations: ``deployments/automations.yaml``, applied by ``qpe deploy``.

Each entry of the file is one :class:`prefect.automations.Automation`: an
:class:`~prefect.events.schemas.automations.EventTrigger` (reactive or proactive) and one
:class:`~prefect.events.actions.SendNotification` action through the notification block named by
the setting ``alert_block`` (a bare name: a Custom Webhook block; ``<type-slug>/<name>``: any
notification block).  The block is created by the operator and holds the URL / token; nothing
here reads its secrets (it is looked up without them, for its id only).

:func:`apply_automations` is idempotent, by name: an automation missing on the server is created,
one whose definition differs is updated in place (extra automations of the same name are deleted:
one per name), an equal one is left alone.  Automations removed from the file are not deleted.
When the block does not exist nothing is sent and the rows say ``skipped`` with a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qpe_core.errors import QpeError

FILE_NAME = "automations.yaml"
DEFAULT_BLOCK_TYPE = "custom-webhook"  # prefect.blocks.notifications.CustomWebhookNotificationBlock
TAGS = ["qpe"]
Labels = dict[str, str | list[str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerSpec(_Strict):
    posture: Literal["Reactive", "Proactive"] = "Reactive"
    expect: list[str] = Field(min_length=1)
    flow: str | None = None  # the run's flow, by name (related resource of role "flow")
    deployment: str | None = None  # the run's deployment, by name (related resource of role "deployment")
    match: Labels = Field(default_factory=dict)
    match_related: list[Labels] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list)
    for_each: list[str] = Field(default_factory=list)
    threshold: int = Field(1, ge=1)
    within: float = Field(0.0, ge=0)  # seconds

    @model_validator(mode="after")
    def _proactive_window(self):
        if self.posture == "Proactive" and self.within < 10:
            raise ValueError("a Proactive trigger needs within >= 10 seconds")
        return self

    def labels(self) -> tuple[Labels, list[Labels]]:
        """``match`` and ``match_related`` with ``flow`` / ``deployment`` turned into label filters."""
        match, related = dict(self.match), list(self.match_related)
        if self.flow or self.deployment:
            match.setdefault("prefect.resource.id", "prefect.flow-run.*")
        for role, name in (("flow", self.flow), ("deployment", self.deployment)):
            if name:
                related.append({"prefect.resource.role": role, "prefect.resource.name": name})
        return match, related

    def describe(self) -> str:
        who = " ".join(f"{k} {v}" for k, v in (("flow", self.flow), ("deployment", self.deployment)) if v)
        extra = f" matching {self.match}" if self.match else ""
        if self.posture == "Proactive":
            return f"Proactive: fewer than {self.threshold} {'|'.join(self.expect)} within {self.within:g} s" \
                   + (f" ({who})" if who else "") + extra
        once = f", at most once per {self.within:g} s" if self.within else ""
        return f"Reactive: {'|'.join(self.expect)}" + (f" ({who})" if who else "") + extra + once


class AlertSpec(_Strict):
    name: str
    description: str = ""
    enabled: bool = True
    trigger: TriggerSpec
    subject: str = "qpe alert: {{ automation.name }}"
    body: str = "{{ automation.description }}"


class AutomationsFile(_Strict):
    automations: list[AlertSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self):
        names = [a.name for a in self.automations]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate automation names in {names}")
        return self


def automations_file(deployment_file: str | Path) -> Path | None:
    """``automations.yaml`` next to the deployment file, if there is one."""
    path = Path(deployment_file).parent / FILE_NAME
    return path if path.is_file() else None


def load_automations(path: str | Path) -> list[AlertSpec]:
    """Read and validate an automations file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise QpeError(f"automations file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return AutomationsFile.model_validate(raw).automations
    except yaml.YAMLError as exc:
        raise QpeError(f"{path}: invalid YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise QpeError(f"{path}: {problems}") from None


def split_block(ref: str) -> tuple[str, str]:
    """``(block type slug, block name)`` of the ``alert_block`` setting."""
    slug, _, name = ref.rpartition("/")
    if not name:
        raise QpeError(f"alert block {ref!r}: expected '<name>' or '<block-type-slug>/<name>'")
    return slug or DEFAULT_BLOCK_TYPE, name


def default_block() -> str:
    from qpe_core.config import load_settings

    return load_settings().alert_block


def build(spec: AlertSpec, block_document_id) -> Any:
    """The automation of one alert (an ``AutomationCore``: an ``Automation`` without id; every
    field set explicitly, so an update replaces the whole definition)."""
    from datetime import timedelta

    from prefect.automations import AutomationCore, EventTrigger, SendNotification

    t = spec.trigger
    match, related = t.labels()
    trigger = EventTrigger(posture=t.posture, expect=set(t.expect), after=set(t.after), for_each=set(t.for_each),
                           match=match, match_related=related, threshold=t.threshold,
                           within=timedelta(seconds=t.within))
    return AutomationCore(name=spec.name, description=spec.description, enabled=spec.enabled, tags=list(TAGS),
                      trigger=trigger, actions=[SendNotification(block_document_id=block_document_id,
                                                                 subject=spec.subject, body=spec.body)],
                      actions_on_trigger=[], actions_on_resolve=[])


def _canonical(automation) -> dict:
    """What decides "equal": the definition as JSON, without ids, sets sorted."""
    from prefect.events.schemas.automations import AutomationCore

    data = AutomationCore.model_validate(automation.model_dump()).model_dump(
        mode="json", exclude={"owner_resource"})

    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            items = [norm(x) for x in v]
            return sorted(items, key=repr) if all(isinstance(x, str) for x in items) else items
        return v

    data = norm(data)
    trig = data["trigger"]
    if isinstance(trig.get("match_related"), dict):  # one spec or a list of one: same filter
        trig["match_related"] = [trig["match_related"]]
    trig["match_related"] = [r for r in trig.get("match_related") or [] if r]
    return data


def plan(specs: list[AlertSpec], block: str | None = None) -> list[dict[str, Any]]:
    """One row per automation (what :func:`apply_automations` would send); contacts no server."""
    slug, name = split_block(block or default_block())
    return [{"automation": s.name, "trigger": s.trigger.describe(), "enabled": s.enabled,
             "action": f"send-notification via {slug}/{name}", "block": f"{slug}/{name}"} for s in specs]


def find_block(block: str) -> Any:
    """The id of the notification block ``block``, None when it does not exist; a block that is not
    a notification block is an error."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, name = split_block(block)
    with get_client(sync_client=True) as client:
        try:
            doc = client.read_block_document_by_name(name, slug, include_secrets=False)
        except ObjectNotFound:
            return None
    caps = doc.block_schema.capabilities if doc.block_schema else ["notify"]
    if "notify" not in caps:
        raise QpeError(f"alert block {slug}/{name} is not a notification block (capabilities {caps})")
    return doc.id


def missing_block_message(block: str) -> str:
    slug, name = split_block(block)
    return (f"notification block {slug}/{name} not found on the Prefect API: automations not applied. Create "
            f"it (UI: Blocks > +, or `prefect block create {slug}`) or set QPE_ALERT_BLOCK to an existing "
            "notification block, then run qpe deploy again")


def apply_automations(path: str | Path, block: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Create or update every automation of ``path`` (see the module docstring); returns the
    :func:`plan` rows with ``status`` (created | updated | unchanged | skipped) and ``id``, and a
    warning (the block is missing) or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import AutomationSort
    from prefect.events.filters import AutomationFilter, AutomationFilterName

    specs = load_automations(path)
    block = block or default_block()
    rows = plan(specs, block)
    if not specs:
        return rows, None
    block_id = find_block(block)
    if block_id is None:
        return [r | {"status": "skipped", "id": "-"} for r in rows], missing_block_message(block)
    with get_client(sync_client=True) as client:
        for spec, row in zip(specs, rows):
            wanted = build(spec, block_id)
            existing = client.read_automations(automations=AutomationFilter(name=AutomationFilterName(
                any_=[spec.name])), sort=AutomationSort.CREATED_DESC)
            if not existing:
                row["id"], row["status"] = str(client.create_automation(wanted)), "created"
                continue
            *extra, first = existing  # the oldest is kept
            for dup in extra:
                client.delete_automation(dup.id)
            if _canonical(first) == _canonical(wanted):
                row["status"] = "unchanged"
            else:
                client.update_automation(first.id, wanted)
                row["status"] = "updated"
            if extra:
                row["status"] += f" ({len(extra)} duplicate(s) removed)"
            row["id"] = str(first.id)
    return rows, None
