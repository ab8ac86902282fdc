"""Image-folder trees: class-per-folder (`<class>/<image>`), the split layout
(`train|val|test/<class>/<image>`), and trees labelled by CSV files (`file,label`)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from planktonzilla.constants import SPLIT_NAMES
from planktonzilla.records import FileBytes, Record, Rejection

#: Files operating systems leave behind; never inputs.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"})
JUNK_DIRS = frozenset({"__MACOSX", ".git", ".ipynb_checkpoints"})
_FILE_COLUMNS = ("file", "filename", "file_name", "path", "img_path", "image", "img_file_name")
_LABEL_COLUMNS = ("label", "class", "category", "taxon", "raw_label")


def is_junk(name: str) -> bool:
    return name in JUNK_NAMES or name.startswith("._")


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-junk file under `root`, in a stable (sorted) order."""
    for _, full in walk_relative(root):
        yield Path(full)


def walk_relative(root: Path) -> Iterator[tuple[str, str]]:
    """(relative posix path, full path) of every non-junk file under `root`, sorted."""
    root = os.fspath(root)
    prefix = len(root.rstrip(os.sep)) + 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in JUNK_DIRS and not d.startswith("._"))
        rel_dir = dirpath[prefix:].replace(os.sep, "/")
        for name in sorted(filenames):
            if not is_junk(name):
                yield (f"{rel_dir}/{name}" if rel_dir else name), os.path.join(dirpath, name)


def read_folder(root: Path, *, labels: list[Path] | None = None) -> Iterator[Record | Rejection]:
    """Yield one `Record` (or `Rejection`) per file under `root`.

    Without `labels`, an image's label is the name of its folder (none for images directly in
    `root` or in a split folder). When the top-level folders are split names (train, val,
    validation, test…) the split goes to `extra["upstream_split"]`. With `labels` (CSV files
    with a file and a label column; root `*labels.csv` files are used when none is given), labels
    come from the CSVs (their other columns go to `extra`), images the CSVs do not list are
    stored unlabelled, and rows naming a missing file are rejected. A CSV named `train.csv`,
    `test_labels.csv`… also gives the split of its rows.
    """
    root = Path(root)
    if labels is None:  # labels.csv, train_labels.csv, test_labels.csv… at the root
        labels = sorted(p for p in root.glob("*.csv") if p.name.lower().endswith("labels.csv"))
    top = {
        e.name.lower()
        for e in os.scandir(root)
        if e.is_dir() and e.name not in JUNK_DIRS and not e.name.startswith("._")
    }
    split_layout = bool(top) and top <= SPLIT_NAMES.keys()
    files = walk_relative(root)  # streamed: memory does not grow with the tree
    if labels:
        label_files = {os.path.realpath(p) for p in labels}
        files = [(rel, full) for rel, full in files if os.path.realpath(full) not in label_files]
        present = {PurePosixPath(rel) for rel, _ in files}
        by_path, rejections = _read_label_files(labels, root, present)
        yield from rejections
    for rel, full in files:
        parts = rel.split("/")
        extra: dict = {}
        split = SPLIT_NAMES.get(parts[0].lower()) if split_layout and len(parts) > 1 else None
        if labels:
            label, csv_split, columns = by_path.get(PurePosixPath(rel), (None, None, None))
            split = csv_split or split
            if columns is None:
                extra["unlabelled_reason"] = "not listed in the label files"
            else:
                extra.update(columns)
        else:
            # the folder holding the image, unless that is the root or a split folder
            label = parts[-2] if len(parts) > (2 if split else 1) else None
        if split:
            extra["upstream_split"] = split
        name = parts[-1]
        yield Record(
            origin=rel,
            image=FileBytes(full),
            source_object_id=name.rsplit(".", 1)[0] if "." in name else name,
            raw_label=label,
            extra=extra,
        )


def _read_label_files(label_files: list[Path], root: Path, present: set[PurePosixPath]):
    """Map relative image path -> (label, split) from CSV label files. A CSV path that is not
    found as given is matched by dropping leading folders (exports often prefix `io/`…)."""
    by_path: dict[PurePosixPath, tuple[str | None, str | None, dict]] = {}
    rejections: list[Rejection] = []
    index = _suffix_index(present)
    for label_file in label_files:
        label_file = Path(label_file)
        stem = label_file.stem.lower()
        split = next((v for k, v in SPLIT_NAMES.items() if stem.split("_")[0] == k), None)
        with open(label_file, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {f.strip().lower(): f for f in reader.fieldnames or []}
            file_col = next((fields[c] for c in _FILE_COLUMNS if c in fields), None)
            label_col = next((fields[c] for c in _LABEL_COLUMNS if c in fields), None)
            if file_col is None or label_col is None:
                raise ValueError(
                    f"{label_file}: need a file column ({', '.join(_FILE_COLUMNS)}) and a label"
                    f" column ({', '.join(_LABEL_COLUMNS)}); found {reader.fieldnames}"
                )
            for line, row in enumerate(reader, start=2):
                name = (row.get(file_col) or "").strip()
                label = (row.get(label_col) or "").strip() or None
                origin = f"{label_file.name}:{line}"
                path = _match(PurePosixPath(name), index) if name else None
                if path is None:
                    rejections.append(
                        Rejection(
                            origin,
                            "missing_file",
                            f"{label_file.name} line {line} names {name!r}, not found under {root}",
                            raw_label=label,
                        )
                    )
                    continue
                if path in by_path:
                    rejections.append(
                        Rejection(
                            origin,
                            "duplicate_input",
                            f"{label_file.name} line {line} lists {name!r} again",
                            raw_label=label,
                        )
                    )
                    continue
                others = {k: v for k, v in row.items() if k not in (file_col, label_col) and v}
                by_path[path] = (label, split, others)
    return by_path, rejections


def _suffix_index(present: set[PurePosixPath]) -> dict[PurePosixPath, PurePosixPath | None]:
    """Every trailing part of every path -> that path (None where two paths share it)."""
    index: dict[PurePosixPath, PurePosixPath | None] = {}
    for path in present:
        for start in range(len(path.parts)):
            key = PurePosixPath(*path.parts[start:])
            index[key] = path if index.get(key, path) == path else None
    return index


def _match(name: PurePosixPath, index: dict) -> PurePosixPath | None:
    for start in range(len(name.parts)):
        found = index.get(PurePosixPath(*name.parts[start:]))
        if found is not None:
            return found
    return None
