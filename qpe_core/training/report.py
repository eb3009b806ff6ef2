"""Readable summaries of a checkpoint: its card (``card.json``) and training log
(``train_log.jsonl``) as validation scores and a Markdown table (the Prefect ``train`` flow
publishes it as a markdown artifact; ``qpe`` users can print it).  No Prefect here."""

from __future__ import annotations

import json
from pathlib import Path

from qpe_core.training.checkpoint import read_card


def read_train_log(out: str | Path) -> list[dict]:
    """Records of ``train_log.jsonl`` in a checkpoint directory ([] when absent); a torn last
    line (a crash mid-write) is ignored."""
    path = Path(out) / "train_log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def validation_scores(card: dict, log: list[dict] | None = None) -> dict:
    """Validation loss of the EMA weights at the last validation (from the card), the best one
    and the last training loss (from the log).  Keys are absent when unknown."""
    scores: dict = {}
    val = card.get("validation") or {}
    if "loss" in val:
        scores["val_loss"] = float(val["loss"])
        scores["val_step"] = int(val.get("step", card.get("steps", 0)))
    log = log or []
    vals = [r for r in log if "val_loss" in r]
    if vals:
        best = min(vals, key=lambda r: r["val_loss"])
        scores["best_val_loss"], scores["best_val_step"] = float(best["val_loss"]), int(best["step"])
    if log:
        scores["train_loss"], scores["train_step"] = float(log[-1]["loss"]), int(log[-1]["step"])
        if "samples_per_s" in log[-1]:
            scores["samples_per_s"] = float(log[-1]["samples_per_s"])
    return scores


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def card_rows(card: dict, log: list[dict] | None = None) -> list[tuple[str, str]]:
    """(item, value) rows describing a checkpoint card."""
    period = card.get("training_period") or {}
    cfg = card.get("config") or {}
    scores = validation_scores(card, log)
    backbone = card.get("backbone") or {}
    rows = [
        ("model kind", card.get("kind")),
        ("backbone", f"{card.get('parameters', 0):,} parameters; " + _fmt(
            {k: backbone[k] for k in ("base_channels", "channel_mults", "num_res_blocks", "emb_dim")
             if k in backbone})),
        ("input channels", f"{card.get('in_channels')} = {len(card.get('lags', []))} lags × "
                           f"({len(card.get('channels', []))} channels + 1 mask)"),
        ("channels", card.get("channels")),
        ("lags (min)", card.get("lags")),
        ("grid", f"{card.get('area')}, {card.get('slot_minutes')}-minute slots, training patch "
                 f"{card.get('patch')} px"),
        ("training period", f"{period.get('first')} .. {period.get('last')} "
                            f"({period.get('train_slots')} training slots)"),
        ("validation period", f"{_fmt(card.get('validation_times'))} "
                              f"({period.get('validation_slots')} validation slots, leakage-free blocks)"),
        ("archive", period.get("archive") if not period.get("held_in_memory_mb") else
         f"{period.get('archive')} (training slots held in memory, {period['held_in_memory_mb']:,} MB)"),
        ("steps", f"{card.get('steps')} × {cfg.get('batch_size', '?')} patches, lr {_fmt(cfg.get('lr'))}, "
                  f"EMA {_fmt(cfg.get('ema_decay'))}, device {cfg.get('device', '?')}"),
        ("validation loss (EMA)", f"{scores['val_loss']:.4f} at step {scores['val_step']}"
         if "val_loss" in scores else "-"),
    ]
    if "best_val_loss" in scores:
        rows.append(("best validation loss", f"{scores['best_val_loss']:.4f} at step {scores['best_val_step']}"))
    if "train_loss" in scores:
        rows.append(("last training loss", f"{scores['train_loss']:.4f} at step {scores['train_step']}"))
    if card.get("mean_checkpoint"):
        mc = card["mean_checkpoint"]
        rows.append(("frozen mean (U-Net)", f"{mc.get('path')}, {mc.get('steps')} steps; residual scale fitted on "
                                            f"{mc.get('residual_fit_on', 'validation patches')}"))
    rows.append(("code version", f"qpe-seviri {card.get('code_version', '?')}, card v{card.get('card_version', '?')}"))
    return [(k, _fmt(v)) for k, v in rows]


def card_markdown(card: dict, log: list[dict] | None = None, title: str | None = None) -> str:
    """The card as a two-column Markdown table (``|`` in values escaped)."""
    lines = [f"### {title or 'checkpoint ' + str(card.get('kind'))}", "", "| item | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in card_rows(card, log)]
    return "\n".join(lines) + "\n"


def checkpoint_markdown(out: str | Path, title: str | None = None) -> str:
    """:func:`card_markdown` of the checkpoint directory ``out``."""
    return card_markdown(read_card(out), read_train_log(out), title or f"checkpoint `{out}`")
