"""The nature_12K folder layout: ``<root>/{train,val}/<class>/<image>``, and the OS junk to ignore.

Real copies of the dataset carry ``.DS_Store``, ``__MACOSX/``, ``Thumbs.db`` and Windows
``*:Zone.Identifier`` side files. Listing folders naively finds an eleventh "class", which shifts
every label; everything that lists the dataset goes through this module instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from naturalist.errors import PipelineError

SPLITS = ("train", "val")
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"})


class LayoutError(PipelineError):
    """The dataset folder does not have the nature_12K layout."""


def is_junk(path: str | PurePosixPath | Path) -> bool:
    """True for OS metadata that is not part of the dataset, at any depth."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    return any(
        part in JUNK_NAMES or part.startswith("._") or part.endswith(":Zone.Identifier")
        for part in parts
    )


def class_dirs(split_dir: Path) -> list[Path]:
    """The class folders of one split, sorted by name, junk and hidden folders left out."""
    return sorted(
        child
        for child in split_dir.iterdir()
        if child.is_dir() and not is_junk(child.name) and not child.name.startswith(".")
    )


def image_files(class_dir: Path) -> list[Path]:
    """The candidate image files of one class folder, sorted; junk and hidden files left out."""
    return sorted(
        child
        for child in class_dir.iterdir()
        if child.is_file() and not is_junk(child.name) and not child.name.startswith(".")
    )


@dataclass(frozen=True)
class Layout:
    """A validated dataset folder: the class names and the image files per split and class."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, dict[str, list[Path]]]

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {c: len(f) for c, f in per_class.items()}
            for split, per_class in self.files.items()
        }

    def summary(self) -> str:
        """One row per class with its train and val counts, for the stage log."""
        counts = self.counts()
        width = max(len(c) for c in self.classes)
        rows = [f"{'class':<{width}}  {'train':>6}  {'val':>6}"]
        rows += [
            f"{c:<{width}}  {counts['train'][c]:>6}  {counts['val'][c]:>6}" for c in self.classes
        ]
        rows.append(
            f"{'total':<{width}}  {sum(counts['train'].values()):>6}  "
            f"{sum(counts['val'].values()):>6}"
        )
        return "\n".join(rows)


def find_dataset_root(folder: Path) -> Path:
    """The folder holding train/ and val/: ``folder`` itself or its single non-junk subfolder.

    The nature_12K zip wraps everything in ``inaturalist_12K/``; a user's own copy may not.
    """
    if all((folder / split).is_dir() for split in SPLITS):
        return folder
    children = [c for c in folder.iterdir() if c.is_dir() and not is_junk(c.name)]
    if len(children) == 1 and all((children[0] / split).is_dir() for split in SPLITS):
        return children[0]
    raise LayoutError(f"{folder}: expected train/ and val/ folders (or one folder that holds them)")


def read_layout(folder: Path) -> Layout:
    """Validate the layout: train/ and val/ with the same non-empty class folders."""
    root = find_dataset_root(folder)
    names = {split: [d.name for d in class_dirs(root / split)] for split in SPLITS}
    if not names["train"]:
        raise LayoutError(f"{root / 'train'}: no class folders")
    if names["train"] != names["val"]:
        only_train = sorted(set(names["train"]) - set(names["val"]))
        only_val = sorted(set(names["val"]) - set(names["train"]))
        raise LayoutError(
            f"{root}: train/ and val/ have different classes "
            f"(only in train: {only_train or 'none'}; only in val: {only_val or 'none'})"
        )
    files = {split: {c: image_files(root / split / c) for c in names[split]} for split in SPLITS}
    for split, per_class in files.items():
        empty = [c for c, found in per_class.items() if not found]
        if empty:
            raise LayoutError(f"{root / split}: empty class folders: {', '.join(empty)}")
    return Layout(root=root, classes=tuple(names["train"]), files=files)
