"""Files shipped with the package: the demo checkpoint (see ``demo-checkpoint/card.json``)."""

from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).parent / "demo-checkpoint"
