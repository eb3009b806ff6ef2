"""Make the shipped demo checkpoint: a float16 copy of a trained checkpoint's EMA weights.

Usage: ``python -m qpe_core.assets.make_demo_checkpoint CHECKPOINT_DIR [OUT_DIR]`` (the card's
``reproduce`` list gives the commands that trained the shipped one: the cascade-flow of
``qpe study --profile cpu``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from qpe_core.assets import DEMO_CHECKPOINT


REPRODUCE = ["qpe study --profile cpu --out data/study/cpu  # trains the unet, then the cascade-flow on it",
             "python -m qpe_core.assets.make_demo_checkpoint data/study/cpu/ck/cascade-flow  # float16 EMA weights",
             "# the shipped checkpoint (2026-12-05) is the cpu study's cascade retrained with the dry-bin "
             "calibration: bit-identical weights to cascade-flow-2slot-s0 of `qpe study --profile cpu-temporal`, "
             "the same training configuration (test test_cpu_temporal_2slot_seed0_pair_trains_exactly_as_the_cpu_studys)"]


def make(src: Path, out: Path = DEMO_CHECKPOINT) -> Path:
    weights = load_file(str(src / "weights.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(half, str(out / "weights.safetensors"), metadata={"dtype": "float16"})
    card = json.loads((src / "card.json").read_text())
    card["weights_dtype"] = "float16"
    card["reproduce"] = REPRODUCE
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out


if __name__ == "__main__":
    print(make(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DEMO_CHECKPOINT))
