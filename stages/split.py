"""split stage: stratified train/val from train/, test from val/, each image decoded once."""

from pathlib import Path

from naturalist.errors import run_stage
from naturalist.params import load_params
from naturalist.split import split_dataset

RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")


def main() -> None:
    params = load_params()
    result = split_dataset(
        RAW_DIR,
        SPLIT_DIR,
        image_size=params.data.image_size,
        val_fraction=params.data.val_fraction,
        seed=params.seed,
    )
    totals = {name: sum(counts.values()) for name, counts in result.counts.items()}
    print(
        f"split: train {totals['train']}, val {totals['val']}, test {totals['test']} images "
        f"at {params.data.image_size} px, {len(result.skipped)} skipped, "
        f"{result.images_per_second:.0f} images/s"
    )


if __name__ == "__main__":
    run_stage(main)
