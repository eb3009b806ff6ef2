"""Checkpoints: weights in safetensors (never pickle) plus a JSON model card.

A checkpoint directory holds::

    card.json            model kind, backbone config, channels, lags, grid, normalisation,
                         rain transform, training period, steps, validation scores, code version
    weights.safetensors  EMA weights of every network, keys "<net>.<param>"
    state.safetensors    raw weights + optimizer moments, for resuming (optional)
    state.json           optimizer hyper-parameters, step, RNG seed (optional)

Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from qpe_core import __version__
from qpe_core.atomic import write_atomically
from qpe_core.errors import QpeError
from qpe_core.models import BTNormalizer, RainTransform, build_networks, objective_from_config

CARD_VERSION = 1


@dataclass
class Loaded:
    """A checkpoint in memory: networks (EMA weights, eval mode), objective and transforms."""

    card: dict
    nets: torch.nn.ModuleDict
    objective: object
    normalizer: BTNormalizer
    transform: RainTransform


def _atomic(path: Path, write) -> None:
    write_atomically(path, write)


def _flat(nets: torch.nn.ModuleDict) -> dict[str, torch.Tensor]:
    return {f"{k}.{p}": v.detach().cpu().contiguous() for k, net in nets.items()
            for p, v in net.state_dict().items()}


def _unflat(nets: torch.nn.ModuleDict, tensors: dict[str, torch.Tensor]) -> None:
    for k, net in nets.items():
        net.load_state_dict({p[len(k) + 1:]: v for p, v in tensors.items() if p.startswith(k + ".")})


def save_checkpoint(out: str | Path, card: dict, ema: torch.nn.ModuleDict, raw: torch.nn.ModuleDict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0) -> Path:
    """Write card and EMA weights (and the resume state when ``raw``/``optimizer`` are given)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card = {**card, "card_version": CARD_VERSION, "code_version": __version__, "steps": step}
    _atomic(out / "weights.safetensors", lambda p: save_file(_flat(ema), str(p), metadata={"kind": card["kind"]}))
    if raw is not None and optimizer is not None:
        tensors = {f"net.{k}": v for k, v in _flat(raw).items()}
        groups = []
        for g_idx, group in enumerate(optimizer.param_groups):
            for p_idx, p in enumerate(group["params"]):
                for name, value in optimizer.state.get(p, {}).items():
                    tensors[f"opt.{g_idx}.{p_idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
            groups.append({k: v for k, v in group.items() if k != "params"})
        _atomic(out / "state.safetensors", lambda p: save_file(tensors, str(p)))
        _atomic(out / "state.json", lambda p: p.write_text(json.dumps({"step": step, "param_groups": groups})))
    _atomic(out / "card.json", lambda p: p.write_text(json.dumps(card, indent=2, default=str)))
    return out


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file.  Nothing else is accepted: a pickle (``torch.save``)
    or any other file is refused with :class:`QpeError` before a byte of it is executed."""
    path, head = Path(path), b""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
        if len(head) < 9 or head[8:9] != b"{":
            raise ValueError("no safetensors header")
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, ValueError, OSError
        kind = "a pickle (torch.save) file" if head[:1] == b"\x80" or head[:2] == b"PK" else "not safetensors"
        raise QpeError(f"{path}: refused: {kind} ({str(exc)[:120]}); checkpoints are loaded only from "
                       "safetensors files, never with pickle") from None


def load_resume_state(out: str | Path, raw: torch.nn.ModuleDict, ema: torch.nn.ModuleDict,
                      optimizer: torch.optim.Optimizer) -> int:
    """Restore raw and EMA weights and optimizer moments from ``out``; returns the step (0 if none)."""
    out = Path(out)
    if not (out / "state.safetensors").is_file() or not (out / "state.json").is_file():
        return 0
    tensors = load_tensors(out / "state.safetensors")
    _unflat(raw, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    _unflat(ema, load_tensors(out / "weights.safetensors"))
    meta = json.loads((out / "state.json").read_text())
    for g_idx, group in enumerate(optimizer.param_groups):
        group.update(meta["param_groups"][g_idx])
        for p_idx, p in enumerate(group["params"]):
            prefix = f"opt.{g_idx}.{p_idx}."
            state = {k[len(prefix):]: v.to(p.device) for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                optimizer.state[p] = state
    return int(meta["step"])


def trained_to(path: str | Path, steps: int) -> bool:
    """True if ``path`` holds a checkpoint saved at exactly ``steps`` optimiser steps."""
    card = Path(path) / "card.json"
    return card.is_file() and json.loads(card.read_text()).get("steps") == steps


def read_card(path: str | Path) -> dict:
    card_path = Path(path) / "card.json"
    if not card_path.is_file():
        raise QpeError(f"{path} is not a checkpoint: card.json not found")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise QpeError(f"{card_path}: invalid JSON ({exc})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint for inference (EMA weights, eval mode)."""
    card = read_card(path)
    objective = objective_from_config(card["objective"])
    nets = build_networks(objective, card["in_channels"], **card["backbone"])
    weights = Path(path) / "weights.safetensors"
    if not weights.is_file():
        raise QpeError(f"{path}: weights.safetensors not found")
    tensors = load_tensors(weights)
    try:
        _unflat(nets, tensors)
    except (RuntimeError, KeyError) as exc:
        raise QpeError(f"{weights}: weights do not match the card's backbone ({str(exc)[:200]})") from None
    nets.to(device).eval()
    return Loaded(card, nets, objective, BTNormalizer.from_dict(card["normalizer"]),
                  RainTransform.from_dict(card["transform"]))


def check_card(card: dict, area: str, channels: list[str], lags: list[int] | None = None,
               other_grid_ok: bool = False) -> None:
    """Raise :class:`QpeError` naming each difference between a card and the data it is applied to.
    ``other_grid_ok`` allows a different grid (generalisation checks: the network is convolutional)."""
    diffs = []
    if card["area"] != area and not other_grid_ok:
        diffs.append(f"grid {area!r} != checkpoint grid {card['area']!r}")
    missing = [c for c in card["channels"] if c not in channels]
    if missing:
        diffs.append(f"archive lacks channels {missing} the checkpoint needs ({card['channels']})")
    if lags is not None and list(lags) != list(card["lags"]):
        diffs.append(f"lags {list(lags)} != checkpoint lags {card['lags']}")
    if diffs:
        raise QpeError(f"checkpoint {card.get('kind', '?')} does not match the data: " + "; ".join(diffs))
