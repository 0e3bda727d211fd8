"""evaluate_test stage: every model in models/ on the test split (evaluate.*)."""

from pathlib import Path

from naturalist.errors import run_stage
from naturalist.evaluation import evaluate_models
from naturalist.params import load_params

MODELS_DIR = Path("models")
SPLIT_DIR = Path("data/split")
RESULTS_DIR = Path("results/evaluate")


def main() -> None:
    options = load_params().evaluate
    evaluate_models(
        MODELS_DIR,
        SPLIT_DIR,
        RESULTS_DIR,
        batch_size=options.batch_size,
        device=options.device,
        grid_per_class=options.grid_per_class,
    )


if __name__ == "__main__":
    run_stage(main)
