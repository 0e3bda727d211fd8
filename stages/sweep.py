"""sweep stage: the W&B-style search in params.yaml's sweep: over the scratch CNN (sweep.*,
model.*, train.*), run by Optuna (resumable from .sweep/) or by a W&B sweep."""

from pathlib import Path

from naturalist.errors import run_stage
from naturalist.params import load_params
from naturalist.sweep import SWEEP_DIR, interrupt_on_sigterm, run_sweep

SPLIT_DIR = Path("data/split")
RESULTS_DIR = Path("results/sweep")
MODEL_PATH = Path("models/sweep_best.pt")


def main() -> None:
    params = load_params()
    with interrupt_on_sigterm():
        run_sweep(
            params,
            split_dir=SPLIT_DIR,
            results_dir=RESULTS_DIR,
            model_path=MODEL_PATH,
            sweep_dir=SWEEP_DIR,
        )


if __name__ == "__main__":
    run_stage(main)
