"""download stage: the embedded synthetic dataset, or nature_12K from data.url."""

from pathlib import Path

from naturalist import synthetic
from naturalist.download import prepare_dataset
from naturalist.errors import run_stage
from naturalist.fsutil import replacing_directory
from naturalist.layout import read_layout
from naturalist.params import load_params

RAW_DIR = Path("data/raw")
DOWNLOAD_CACHE = Path(".cache/downloads")  # outside the stage's outputs, so downloads can resume


def main() -> None:
    params = load_params()
    data = params.data
    if data.source == "synthetic":
        options = data.synthetic
        with replacing_directory(RAW_DIR) as tmp:
            synthetic.generate(
                tmp,
                seed=params.seed,
                train_per_class=options.train_per_class,
                test_per_class=options.test_per_class,
                min_side=options.min_side,
                max_side=options.max_side,
            )
        print(read_layout(RAW_DIR).summary())
        print(f"download: wrote the synthetic dataset to {RAW_DIR}")
    else:
        prepare_dataset(
            data.url,
            RAW_DIR,
            expected_bytes=data.expected_bytes,
            sha256=data.sha256,
            cache_dir=DOWNLOAD_CACHE,
        )


if __name__ == "__main__":
    run_stage(main)
