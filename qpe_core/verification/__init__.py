"""Verification of rain-rate estimates against radar (streaming: update per slot, compute at the end)."""

from qpe_core.verification.scores import Scorer

__all__ = ["Scorer"]
