"""train_scratch stage: the 5-block CNN from scratch on the split arrays (model.*, train.*)."""

from pathlib import Path

from naturalist.errors import run_stage
from naturalist.params import load_params
from naturalist.runs import Splits, train_scratch

SPLIT_DIR = Path("data/split")
RESULTS_DIR = Path("results/train_scratch")
MODEL_PATH = Path("models/scratch.pt")


def main() -> None:
    params = load_params()
    train_scratch(params, Splits.load(SPLIT_DIR), dvclive_dir=RESULTS_DIR, model_path=MODEL_PATH)


if __name__ == "__main__":
    run_stage(main)
