"""finetune@<N> stage: an ImageNet backbone fine-tuned with N % of its layers frozen (finetune.*).

Usage: python stages/finetune.py N   (dvc.yaml runs it once per level in finetune.freeze)

The level comes from the command line, not from ``finetune.freeze``, so each stage depends only on
its own level: adding a level to the list adds a stage and re-runs none of the others.
"""

import sys
from pathlib import Path

from naturalist.errors import PipelineError, run_stage
from naturalist.params import load_params
from naturalist.runs import Splits, finetune

SPLIT_DIR = Path("data/split")
RESULTS_DIR = Path("results/finetune")
MODELS_DIR = Path("models")


def parse_level(argv: list[str]) -> int:
    """The freeze percentage given on the command line (an integer 0..100)."""
    if len(argv) != 1:
        raise PipelineError("usage: python stages/finetune.py N   (N = freeze percentage 0..100)")
    try:
        level = int(argv[0])
    except ValueError:
        level = -1
    if not 0 <= level <= 100 or str(level) != argv[0].strip():
        raise PipelineError(f"finetune: freeze level {argv[0]!r} must be an integer 0..100")
    return level


def main() -> None:
    level = parse_level(sys.argv[1:])
    params = load_params()
    finetune(
        params,
        Splits.load(SPLIT_DIR),
        freeze=level,
        dvclive_dir=RESULTS_DIR / str(level),
        model_path=MODELS_DIR / f"finetune_{level}.pt",
    )


if __name__ == "__main__":
    run_stage(main)
