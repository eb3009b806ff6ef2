"""Whether two study runs scored the same: every figure of two ``metrics.json`` compared exactly.

    python scripts/same_scores.py A/metrics.json B/metrics.json

Prints each figure that differs (its path in the JSON, both values) and exits 1 if any does, wall
times per case (``seconds_per_case``) and objective options one run's card lacks (``None`` there:
added to the code after it was trained, at their defaults) apart. Used to show that a fresh clone's
``qpe study --profile cpu`` reproduces the committed report (``docs/studies/cpu/fresh-clone``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING = ("seconds_per_case",)


def differences(a, b, path: str = "") -> list[tuple[str, object, object]]:
    """``(path, a, b)`` for every leaf that differs between two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def main(argv=None) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (argv or sys.argv[1:]))
    diffs = differences(a, b)
    timing = [d for d in diffs if d[0].rsplit(".", 1)[-1] in TIMING]
    added = [d for d in diffs if ".objective." in d[0] and None in (d[1], d[2]) and d not in timing]
    scores = [d for d in diffs if d not in timing and d not in added]
    for p, x, y in scores:
        print(f"{p}: {str(x)[:60]} | {str(y)[:60]}")
    print(f"{len(scores)} figures differ; apart: {len(timing)} wall times, "
          f"{len(added)} objective options one card lacks ({', '.join(d[0].rsplit('.', 1)[-1] for d in added) or '-'})")
    return 1 if scores else 0


if __name__ == "__main__":
    sys.exit(main())
