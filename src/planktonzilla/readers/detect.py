"""The reader registry: any mix of image files and folders, IFCB bins, FlowCam runs, EcoTaxa
exports, plain zips of images and our object store, told apart by content and layout by one
`detect()`, and read by the reader registered for that kind (`READERS`). Used by `pz ingest
PATH…` (image folders read with their class folders, split layout and label CSVs) and by
`pz predict`.

Every input comes out as one `Record` (an image to classify, with the metadata it carried) or
one `Rejection` (why it cannot be classified), so that every input is accounted for. A path
that does not exist or is of no known kind is a `Rejection`, never an exception.

Origins are the readers' own (`<bin_id>_<roi>`, `<run>/<particle>`, `<table>#<object_id>`, a
path relative to the folder given…); with several inputs each is prefixed with its input path
and `::` so that it stays unique within the run: it is the key that makes an output resumable.
`extra["img_file_name"]` is the name an image gets in an EcoTaxa output.

>>> from collections import Counter
>>> Counter(type(r).__name__ for r in read_inputs(["bins/", "vignettes/"]))  # doctest: +SKIP
Counter({'Record': 1234, 'Rejection': 2})
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from planktonzilla.fileio import zip_member_problem
from planktonzilla.images import IMAGE_MAGIC, IMAGE_SUFFIXES
from planktonzilla.readers.ecotaxa import is_table_name
from planktonzilla.readers.folder import JUNK_DIRS, is_junk, walk_relative
from planktonzilla.records import FileBytes, Record, Rejection
from planktonzilla.store.layout import MANIFEST, is_store

__all__ = ["INGEST_READERS", "KINDS", "READERS", "detect", "read_inputs"]

#: The kinds of input `detect` recognises.
KINDS = ("image", "images", "ifcb", "flowcam", "ecotaxa", "store", "zip")

# Leading bytes of the image formats we accept (planktonzilla.images.ACCEPTED_FORMATS).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_IFCB_SUFFIXES = (".hdr", ".adc", ".roi")
_FLOWCAM_SUFFIXES = (".lst", ".flb")
_FORMAT_SUFFIX = {"jpeg": ".jpg", "tiff": ".tif"}
_SEPARATOR = "::"
_STORE_BATCH = 256


def read_inputs(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    where: str | None = None,
    ingest: bool = False,
) -> Iterator[Record | Rejection]:
    """Yield one `Record` or `Rejection` per input found under `paths` (see the module doc).
    `where`: a SQL condition on the store's `objects` view, for store inputs. `ingest`: read
    for a store rather than for prediction (`INGEST_READERS`: image folders with their class
    folders, split layout and label CSVs; metadata-only EcoTaxa rows kept)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    unique = list(dict.fromkeys(Path(p) for p in paths))  # the same path twice is one input
    several = len(unique) > 1
    for path in unique:
        for item in _read(path, where, INGEST_READERS if ingest else READERS):
            if several:
                item.origin = f"{path}{_SEPARATOR}{item.origin}"
            yield item


def detect(path: str | os.PathLike) -> str | None:
    """The kind of input at `path` (one of `KINDS`), or None when it is none of them.
    Raises OSError when the path cannot be read."""
    path = Path(path)
    if path.is_dir():
        return _detect_dir(path)
    head = _head(path)
    suffix = path.suffix.lower()
    if suffix in _IFCB_SUFFIXES:
        return "ifcb"
    if b"num-fields|" in head[:200] or suffix in _FLOWCAM_SUFFIXES:
        return "flowcam"
    if head.startswith(_ZIP_MAGIC):
        return _detect_zip(path)
    if head.startswith(IMAGE_MAGIC):
        return "image"
    if is_table_name(path.name) or _looks_like_table(head):
        return "ecotaxa"
    if path.name == MANIFEST and is_store(path.parent):
        return "store"
    if suffix in IMAGE_SUFFIXES:
        return "image"  # an image that does not start like one: its prediction says why
    return None


# --------------------------------------------------------------------------- detection


def _head(path: Path, n: int = 512) -> bytes:
    """The first `n` bytes of a regular file; b"" for a FIFO or device (never opened for
    reading: a FIFO would block, a device may never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, n) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)


def _looks_like_table(head: bytes) -> bool:
    """An EcoTaxa / EcoPart object table: a tab-separated header naming its object ids."""
    first = head.split(b"\n", 1)[0].lower()
    return b"\t" in first and any(c in first for c in (b"object_id", b"img_file_name", b"orig_id"))


def _is_image_file(path: str) -> bool:
    if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
        return True
    try:
        return _head(Path(path), 8).startswith(IMAGE_MAGIC)
    except OSError:
        return False


def _detect_dir(path: Path) -> str | None:
    """Store, else by what the tree holds: IFCB bins before FlowCam lists before EcoTaxa
    tables before images (a FlowCam run or an EcoTaxa export also holds images)."""
    if is_store(path):
        return "store"
    from planktonzilla.readers.ifcb import parse_bin_name

    found: set[str] = set()
    for rel, full in walk_relative(path):
        base, suffix = os.path.splitext(rel.rsplit("/", 1)[-1])
        suffix = suffix.lower()
        if suffix in _IFCB_SUFFIXES and parse_bin_name(base):
            return "ifcb"
        if suffix in _FLOWCAM_SUFFIXES:
            found.add("flowcam")
            continue
        if "ecotaxa" not in found:
            if is_table_name(rel) and _table_header_ok(full):
                found.add("ecotaxa")
                continue
            if suffix == ".zip" and _detect_zip(Path(full)) == "ecotaxa":
                found.add("ecotaxa")
                continue
        if "images" not in found and _is_image_file(full):
            found.add("images")
    for kind in ("flowcam", "ecotaxa", "images"):
        if kind in found:
            return kind
    return None


def _table_header_ok(path: str) -> bool:
    if path.lower().endswith(".gz"):
        return True  # read_ecotaxa tells a compressed non-table apart
    try:
        return _looks_like_table(_head(Path(path), 4096))
    except OSError:
        return False


def _detect_zip(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError):
        return "zip"  # reading it reports the damage as a rejection
    if any(is_table_name(n) or n.lower().endswith(".zip") for n in names):
        return "ecotaxa"
    return "zip"


# --------------------------------------------------------------------------- reading


def _read(path: Path, where: str | None, readers: dict) -> Iterator[Record | Rejection]:
    if not path.exists():
        if any(path.with_name(path.name + s).is_file() for s in _IFCB_SUFFIXES):
            yield from _read_ifcb(path)  # a bin named without its suffix
            return
        yield Rejection(str(path), "missing_file", f"{path} does not exist")
        return
    try:
        kind = detect(path)
    except OSError as exc:
        yield Rejection(str(path), "unreadable", f"cannot read {path}: {exc}")
        return
    if kind is None:
        what = "folder holds no" if path.is_dir() else "file is not an"
        yield Rejection(
            str(path),
            "unsupported_format",
            f"{path}: this {what} image, IFCB bin, FlowCam run, EcoTaxa export, zip of images "
            "or planktonzilla store",
        )
        return
    if kind == "store":
        yield from _read_store(path if path.is_dir() else path.parent, where)
    else:
        yield from readers[kind](path)


def _read_images(root: Path) -> Iterator[Record | Rejection]:
    """Every file of an image folder; class sub-folder names are kept as `raw_label` (not used
    for prediction) and files that are not images are rejected."""
    for rel, full in walk_relative(root):
        if not _is_image_file(full):
            yield Rejection(rel, "unsupported_format", f"{rel}: not an image file")
            continue
        parts = rel.split("/")
        yield Record(
            rel,
            FileBytes(full),
            raw_label=parts[-2] if len(parts) > 1 else None,
            extra={"img_file_name": rel},
        )


def _read_ifcb(path: Path) -> Iterator[Record | Rejection]:
    from planktonzilla.readers.ifcb import read_ifcb

    for item in read_ifcb(path):
        if isinstance(item, Record):
            item.extra["img_file_name"] = f"{item.origin}.png"
        yield item


def _read_flowcam(path: Path) -> Iterator[Record | Rejection]:
    from planktonzilla.readers.flowcam import read_flowcam

    for item in read_flowcam(path):
        if isinstance(item, Record):
            item.extra["img_file_name"] = f"{item.origin}.png"  # <run>/<particle>.png
        yield item


def _read_ecotaxa(path: Path) -> Iterator[Record | Rejection]:
    from planktonzilla.readers.ecotaxa import read_ecotaxa

    for item in read_ecotaxa(path):
        if isinstance(item, Record):
            if item.image is None:
                yield Rejection(
                    item.origin,
                    "no_image",
                    "metadata-only row: the export has no image of this object to classify",
                    item.source_object_id,
                    item.raw_label,
                )
                continue
            item.extra.setdefault("img_file_name", _ecotaxa_image_name(item, path))
        yield item


def _ecotaxa_image_name(record: Record, root: Path) -> str:
    """The image's name relative to its table, as the export's `img_file_name` gave it."""
    from planktonzilla.readers.ecotaxa import ZipMember

    table = record.origin.split("#", 1)[0]
    image = record.image
    if isinstance(image, ZipMember):
        member_dir = posixpath.dirname(table.rsplit("!", 1)[-1]) if "!" in table else ""
        return posixpath.relpath(image.members[-1], member_dir or ".")
    if isinstance(image, FileBytes):
        base = root.parent if root.is_file() else root / posixpath.dirname(table)
        return Path(os.path.relpath(image.path, base)).as_posix()
    return f"{record.source_object_id or record.origin}.png"


def _read_store(root: Path, where: str | None) -> Iterator[Record | Rejection]:
    """Stored objects, streamed in batches; the store's `object_id` becomes the id."""
    from datetime import UTC

    from planktonzilla.store import ObjectStore

    columns = [
        "object_id", "source", "origin", "source_object_id", "raw_label", "instrument",
        "pixel_size_um", "lat", "lon", "depth_min", "depth_max", "time_utc", "sample_id",
        "license", "image_format", "extra",
    ]  # fmt: skip
    objects = ObjectStore(root).objects(
        columns=columns, images=True, where=where, batch_size=_STORE_BATCH
    )
    for row in objects:
        origin = f"{row['source']}/{row['origin']}"
        extra = json.loads(row["extra"]) if row["extra"] else {}
        extra["source"] = row["source"]
        if row["source_object_id"]:
            extra["source_object_id"] = row["source_object_id"]
        if row["image"] is None:
            yield Rejection(
                origin,
                "no_image",
                "metadata-only object: the store holds no image of it",
                row["object_id"],
                row["raw_label"],
            )
            continue
        fmt = row["image_format"] or "png"
        extra["img_file_name"] = f"{row['object_id']}{_FORMAT_SUFFIX.get(fmt, '.' + fmt)}"
        when = row["time_utc"]
        yield Record(
            origin,
            row["image"],
            source_object_id=row["object_id"],
            raw_label=row["raw_label"],
            instrument=row["instrument"],
            pixel_size_um=row["pixel_size_um"],
            lat=row["lat"],
            lon=row["lon"],
            depth_min=row["depth_min"],
            depth_max=row["depth_max"],
            time_utc=when.astimezone(UTC) if when is not None else None,
            sample_id=row["sample_id"],
            license=row["license"],
            extra=extra,
        )


def _read_zip(path: Path) -> Iterator[Record | Rejection]:
    """A plain zip of images, read in place; a folder inside it is kept as `raw_label`."""
    from planktonzilla.readers.ecotaxa import ZipMember

    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
            heads = {}
            for info in infos:  # sniff members whose name does not say image
                name = info.filename
                if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                    with zf.open(info) as fh:
                        heads[name] = fh.read(8)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Rejection(path.name, "corrupt", f"{path}: not a readable zip ({exc})")
        return
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if is_junk(parts[-1]) or any(p in JUNK_DIRS or p.startswith("._") for p in parts[:-1]):
            continue
        problem = zip_member_problem(info)
        if problem:
            yield Rejection(name, problem[0], f"{path}: {problem[1]}")
            continue
        if name in heads and not heads[name].startswith(IMAGE_MAGIC):
            yield Rejection(name, "unsupported_format", f"{path}!{name}: not an image file")
            continue
        yield Record(
            name,
            ZipMember(path, (name,)),
            raw_label=parts[-2] if len(parts) > 1 else None,
            extra={"img_file_name": name},
        )


def _read_image(path: Path) -> Iterator[Record | Rejection]:
    yield Record(path.name, FileBytes(path), extra={"img_file_name": path.name})


def _read_labelled_folder(root: Path) -> Iterator[Record | Rejection]:
    from planktonzilla.readers.folder import read_folder

    return read_folder(root)


def _read_ecotaxa_rows(path: Path) -> Iterator[Record | Rejection]:
    from planktonzilla.readers.ecotaxa import read_ecotaxa

    return read_ecotaxa(path)


#: The reader of each kind `detect` finds (a store is read with the caller's `where`).
READERS: dict[str, Callable[[Path], Iterator[Record | Rejection]]] = {
    "image": _read_image,
    "images": _read_images,
    "ifcb": _read_ifcb,
    "flowcam": _read_flowcam,
    "ecotaxa": _read_ecotaxa,
    "zip": _read_zip,
}
#: What ingest reads differently: labelled folders, and EcoTaxa rows with no image.
INGEST_READERS = {**READERS, "images": _read_labelled_folder, "ecotaxa": _read_ecotaxa_rows}
