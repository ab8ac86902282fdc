"""Materialise a store's view for other tools: Parquet that Hugging Face `datasets` loads with
its `Image` feature, and an image-folder tree (`<label>/<object_id>.<ext>` + metadata.csv)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from planktonzilla.fileio import commit_file
from planktonzilla.store import ObjectStore

# `datasets` reads its features from this schema metadata: `image` becomes an Image feature
# (a struct of the original bytes and a file name), every other column keeps its type.
_HF_IMAGE = {"_type": "Image"}


#: The per-object metadata every export carries beside the image.
_METADATA = (
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
)


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
    columns = [*_METADATA, "license"]
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


# ------------------------------------------------------------------------- WebDataset
#: Samples per tar shard / bytes per shard (whichever comes first): ~100 MB-1 GB shards are
#: what WebDataset streaming is sized for (large sequential reads, a few shards per worker).
SHARD_SAMPLES = 10_000
SHARD_BYTES = 512 << 20
_WDS_META = (*_METADATA, "width", "height", "license", "license_url")


def export_webdataset(
    store: ObjectStore,
    split_name: str,
    out: Path,
    *,
    samples_per_shard: int = SHARD_SAMPLES,
    shard_bytes: int = SHARD_BYTES,
    **view_filters,
) -> dict:
    """Write the dataset view of `split_name` (`dataset_view` with `view_filters`) as
    WebDataset tar shards `out/<side>-NNNNNN.tar`, each object as
    ``<object_id>.<jpg|png|…>`` (the original bytes), ``.txt`` (the lineage caption of its
    class), ``.json`` (metadata, label, label index, lineage) and ``.license`` (its licence).
    Objects are in object-id (content hash) order, so shards are well mixed.

    Also writes ``sizes.json`` (samples per shard, read by open_clip's `get_wds_dataset`) and
    ``index.json``: the label space (classes, class lineages, per-side class counts), the
    split and filters, and the shards per side — what `planktonzilla.data.shards` trains from.
    Tars are written with the stdlib `tarfile` (ustar; a sample's members adjacent), each
    committed by rename when complete: a killed export leaves only `.partial` files.
    Returns the index."""
    import numpy as np

    from planktonzilla.constants import SIDES
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.fileio import atomic_write
    from planktonzilla.taxonomy.captions import lineage_caption
    from planktonzilla.taxonomy.lineage import Lineage

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    view = dataset_view(store, split_name, **view_filters)
    captions = [  # the caption our CLIP training gives the class (models.clip.caption)
        lineage_caption(Lineage.from_dict({k: v or "" for k, v in c.items() if k != "aphia_id"}))
        for c in view.class_lineages
    ]
    index: dict = {
        "format": "planktonzilla-webdataset/1",
        "scheme": view.scheme,
        "filters": view.filters,
        "manifest_hash": view.manifest_hash,
        "split_info": view.split_info,
        "classes": view.classes,
        "class_lineages": view.class_lineages,
        "sides": {},
    }
    sizes: dict[str, int] = {}
    lineage_cols = [c for c in view.table.column_names if c not in ("split", "object_id")]
    con = store.connect()
    try:
        for side in SIDES:
            rows = view.side(side)
            counts = np.bincount(
                rows["label_index"].to_numpy(zero_copy_only=False), minlength=view.num_classes
            )
            con.register("_side", rows.select(["object_id", *lineage_cols]))
            meta = ", ".join(f"o.{c}" for c in _WDS_META if c not in rows.column_names)
            sql = (
                f"SELECT s.*, {meta}, o.image, o.image_format FROM _side s"
                " JOIN objects o USING (object_id) ORDER BY object_id"
            )
            writer = _TarShards(out, side, samples_per_shard, shard_bytes)
            for batch in con.sql(sql).to_arrow_reader(batch_size=1024):
                for row in batch.to_pylist():
                    ext = "jpg" if row["image_format"] == "jpeg" else row["image_format"]
                    info = {k: row[k] for k in row if k not in ("image", "image_format")}
                    info["time_utc"] = None if info["time_utc"] is None else str(info["time_utc"])
                    info["label"] = view.classes[row["label_index"]]
                    writer.add(
                        row["object_id"],
                        {
                            ext: row["image"],
                            "json": json.dumps(info, sort_keys=True).encode(),
                            "license": (row["license"] or "").encode(),
                            "txt": captions[row["label_index"]].encode(),
                        },
                    )
            shards = writer.close()
            sizes.update((s["url"], s["samples"]) for s in shards)
            con.unregister("_side")
            index["sides"][side] = {
                "samples": int(sum(s["samples"] for s in shards)),
                "class_counts": counts.astype(int).tolist(),
                "shards": shards,
            }
    finally:
        con.close()
    atomic_write(out / "sizes.json", json.dumps(sizes, indent=1).encode())
    atomic_write(out / "index.json", json.dumps(index, indent=1, default=str).encode())
    return index


class _TarShards:
    """`<prefix>-NNNNNN.tar` files of at most `samples` samples / about `max_bytes` bytes."""

    def __init__(self, out: Path, prefix: str, samples: int, max_bytes: int):
        self.out, self.prefix, self.samples, self.max_bytes = out, prefix, samples, max_bytes
        self.shards: list[dict] = []
        self._tar = None
        self._n = self._bytes = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        import io
        import tarfile

        if self._tar is None or self._n >= self.samples or self._bytes >= self.max_bytes:
            self._finish()
            self.shards.append({"url": f"{self.prefix}-{len(self.shards):06d}.tar"})
            partial = self.out / f".{self.shards[-1]['url']}.partial"
            self._tar = tarfile.open(partial, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            self._n = self._bytes = 0
        for suffix, data in members.items():
            member = tarfile.TarInfo(f"{key}.{suffix}")
            member.size, member.mode, member.mtime = len(data), 0o444, 0
            self._tar.addfile(member, io.BytesIO(data))
            self._bytes += len(data) + 1024  # + header and padding
        self._n += 1

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            name = self.shards[-1]["url"]
            commit_file(self.out / f".{name}.partial", self.out / name)
            self.shards[-1]["samples"] = self._n
            self._tar = None

    def close(self) -> list[dict]:
        self._finish()
        return self.shards
