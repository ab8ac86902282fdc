"""Materialise a store's view for other tools: Parquet that Hugging Face `datasets` loads with
its `Image` feature, and an image-folder tree (`<label>/<object_id>.<ext>` + metadata.csv)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from planktonzilla.store import ObjectStore

# `datasets` reads its features from this schema metadata: `image` becomes an Image feature
# (a struct of the original bytes and a file name), every other column keeps its type.
_HF_IMAGE = {"_type": "Image"}


def export_parquet(
    store: ObjectStore, out: Path, *, where: str | None = None, rows_per_file: int = 50_000
) -> list[Path]:
    """Write the store's `objects` view (optionally filtered by a SQL `where`) to
    `out/part-NNNNN.parquet`. The image bytes are kept as they are (struct `image.bytes`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sql = (
        "SELECT * EXCLUDE (image), {'bytes': image, 'path': object_id || '.' || image_format}"
        " AS image FROM objects" + (f" WHERE {where}" if where else "") + " ORDER BY source, origin"
    )
    con = store.connect()
    paths: list[Path] = []
    try:
        reader = con.sql(sql).to_arrow_reader(batch_size=4096)
        writer = None
        written = 0
        for batch in reader:
            if writer is None or written >= rows_per_file:
                if writer:
                    writer.close()
                paths.append(out / f"part-{len(paths):05d}.parquet")
                writer = pq.ParquetWriter(paths[-1], _with_hf_metadata(batch.schema))
                written = 0
            writer.write_batch(batch)
            written += batch.num_rows
        if writer:
            writer.close()
    finally:
        con.close()
    return paths


def _with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    features = {
        f.name: _HF_IMAGE
        if f.name == "image"
        else {"dtype": _HF_DTYPES.get(str(f.type), str(f.type)), "_type": "Value"}
        for f in schema
    }
    meta = {"info": {"features": features}}
    return schema.with_metadata({b"huggingface": json.dumps(meta).encode()})


_HF_DTYPES = {"double": "float64", "float": "float32"}


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def export_imagefolder(
    store: ObjectStore, out: Path, *, label: str = "raw_label", where: str | None = None
) -> int:
    """Write `out/<label>/<object_id>.<ext>` (original bytes) and `out/metadata.csv`
    (the `datasets` imagefolder convention). Returns the number of images written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = [
        "object_id",
        "source",
        "source_object_id",
        "raw_label",
        "instrument",
        "sample_id",
        "lat",
        "lon",
        "depth_min",
        "depth_max",
        "time_utc",
        "license",
    ]
    con = store.connect()
    n = 0
    try:
        sql = (
            f"SELECT {', '.join(columns)}, {label} AS _label, image, image_format FROM objects"
            f" WHERE image IS NOT NULL {'AND ' + where if where else ''} ORDER BY source, origin"
        )
        with open(out / "metadata.csv", "w", newline="") as fh:
            meta = csv.writer(fh)
            meta.writerow(["file_name", *columns])
            for batch in con.sql(sql).to_arrow_reader(batch_size=2048):
                for row in batch.to_pylist():
                    folder = _UNSAFE.sub("_", str(row["_label"] or "unlabelled")).strip(". ")
                    ext = "jpg" if row["image_format"] == "jpeg" else row["image_format"]
                    rel = f"{folder or 'unlabelled'}/{row['object_id']}.{ext}"
                    (out / rel).parent.mkdir(exist_ok=True)
                    (out / rel).write_bytes(row["image"])
                    meta.writerow([rel, *(row[c] for c in columns)])
                    n += 1
    finally:
        con.close()
    return n
