"""Build the shipped mapping: `python -m planktonzilla.taxonomy.build [--labels CSV] [--out CSV]`.

Resolves every `(source, raw_label)` of `source_labels.csv` with the packaged backbone
(offline), writes `taxonomy/data/mapping.csv` + `mapping.json`, prints a summary and the result
of the consistency check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planktonzilla.taxonomy.backbone import Backbone
from planktonzilla.taxonomy.mapping import (
    DEFAULT_LABELS,
    MAPPING_CSV,
    build_mapping,
    check_files,
    read_source_labels,
    write_mapping,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planktonzilla.taxonomy.build")
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="source_labels.csv")
    ap.add_argument("--backbone", type=Path, default=None, help="backbone directory")
    ap.add_argument("--out", type=Path, default=MAPPING_CSV)
    args = ap.parse_args(argv)
    backbone = Backbone.load(args.backbone)
    pairs = read_source_labels(args.labels)
    meta = write_mapping(build_mapping(pairs, backbone), args.out, backbone_digest=backbone.digest)
    print(json.dumps(meta, indent=2, sort_keys=True))
    errors, warnings = check_files(args.out, backbone, args.labels)
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    for e in errors:
        print("error:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
