"""The object store and image-folder ingest, on the real data of ../shared/data."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from planktonzilla.readers.folder import read_folder
from planktonzilla.records import Record
from planktonzilla.store import ObjectStore, StoreError

CONFLICT = ("chaetognath_non_sagitta/14864.jpg", "chaetognath_other/271.jpg")


@pytest.fixture(scope="module")
def isiis_store(tmp_path_factory, shared_data):
    """The whole isiis_ndsb folder (30,336 files) ingested once for this module."""
    store = ObjectStore(tmp_path_factory.mktemp("isiis") / "store")
    report = store.ingest(read_folder(shared_data / "isiis_ndsb"), source="planktonset1.0")
    return store, report


def test_isiis_ndsb_counts_and_label_conflict(isiis_store):
    store, report = isiis_store
    assert (report.read, report.stored, report.rejected) == (30_336, 30_335, 1)
    assert report.label_conflicts == 1
    stats = store.stats()
    assert (stats["read"], stats["stored"], stats["rejected"]) == (30_336, 30_335, 1)
    assert stats["sources"] == [
        {"source": "planktonset1.0", "stored": 30_335, "rejected": 1, "raw_labels": 121}
    ]
    [conflict] = stats["label_conflicts"]
    assert (conflict["kept_origin"], conflict["origin"]) == CONFLICT
    assert conflict["kept_label"] == "chaetognath_non_sagitta"
    assert conflict["raw_label"] == "chaetognath_other"
    [rejected] = store.query("select * from rejected").to_pylist()
    assert rejected["reason"] == f"duplicate_of:{conflict['object_id']}"
    assert "label conflict" in rejected["message"]


def test_isiis_ndsb_rows_are_faithful(isiis_store, shared_data):
    store, _ = isiis_store
    row = store.query(
        "select * from objects where origin = 'chaetognath_non_sagitta/14864.jpg'"
    ).to_pylist()[0]
    original = (shared_data / "isiis_ndsb" / row["origin"]).read_bytes()
    assert row["image"] == original  # byte-identical, never re-encoded
    import hashlib

    assert row["object_id"] == hashlib.sha256(original).hexdigest()
    with Image.open(io.BytesIO(original)) as im:
        assert (row["width"], row["height"], row["channels"]) == (*im.size, len(im.getbands()))
    assert row["image_format"] == "jpeg"
    assert row["raw_label"] == "chaetognath_non_sagitta" and row["source_object_id"] == "14864"
    n_ids = store.query("select count(distinct object_id) n from objects").to_pylist()[0]["n"]
    assert n_ids == 30_335


def test_isiis_ndsb_rerun_adds_nothing(isiis_store, shared_data):
    store, _ = isiis_store
    before = store.manifest()
    report = store.ingest(read_folder(shared_data / "isiis_ndsb"), source="planktonset1.0")
    assert (report.read, report.stored, report.rejected, report.skipped) == (0, 0, 0, 30_336)
    assert store.manifest()["sources"] == before["sources"]


def test_manifest_describes_every_shard(isiis_store):
    store, _ = isiis_store
    manifest = store.manifest()
    entry = manifest["sources"]["planktonset1.0"]
    assert (entry["objects"], entry["rejected"]) == (30_335, 1)
    assert manifest["objects"] == 30_335 and manifest["schema_version"] == 1
    import hashlib

    for shard in entry["shards"] + entry["rejected_shards"]:
        path = store.path / shard["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert pq.ParquetFile(path).metadata.num_rows == shard["rows"]


def test_objects_iterates_without_image_bytes_unless_asked(isiis_store):
    store, _ = isiis_store
    rows = list(store.objects(where="raw_label = 'tunicate_salp'", source="planktonset1.0"))
    assert rows and all(r["raw_label"] == "tunicate_salp" for r in rows)
    assert "image" not in rows[0]
    assert {r["class"] for r in rows} == {"Thaliacea"}  # lineage joined at read time
    with_images = next(store.objects(columns=["object_id"], images=True))
    assert set(with_images) == {"object_id", "image"} and with_images["image"]


def _bad_inputs(tmp_path: Path, shared_data: Path) -> Path:
    """A class tree with every kind of bad input, made from real images."""
    jpgs = sorted((shared_data / "isiis_ndsb" / "copepod_cyclopoid_oithona").glob("*.jpg"))[:3]
    root = tmp_path / "bad"
    good, junk = root / "good", root / "junk"
    good.mkdir(parents=True)
    junk.mkdir()
    for p in jpgs:
        shutil.copy(p, good / p.name)
    data = jpgs[0].read_bytes()
    (junk / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (junk / "zero.jpg").write_bytes(b"")
    scrambled = data[:100] + bytes(b ^ 0x5A for b in data[100:-2]) + data[-2:]
    (junk / "corrupt.jpg").write_bytes(scrambled)  # right length and markers, garbled inside
    (junk / "garbage.png").write_bytes(os.urandom(300))
    (junk / "duplicate.jpg").write_bytes(data)
    (junk / "notes.txt").write_text("field notes, not an image")
    bomb = Image.new("L", (9000, 9000))  # 81 Mpx of zeros: a tiny PNG that decodes huge
    bomb.save(junk / "bomb.png")
    gif = io.BytesIO()
    frames = [Image.fromarray(jpgs_array) for jpgs_array in _frames(jpgs[1])]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    (good / "animated.gif").write_bytes(gif.getvalue())
    for name in (".DS_Store", "._good.jpg", "Thumbs.db"):  # OS junk: skipped, not inputs
        (good / name).write_bytes(b"\x00\x01junk")
    return root


def _frames(path):
    import numpy as np

    with Image.open(path) as im:
        a = np.asarray(im.convert("L"))
    return [a, 255 - a]


def test_bad_inputs_are_rejected_with_reasons(tmp_path, shared_data):
    store = ObjectStore(tmp_path / "store")
    root = _bad_inputs(tmp_path, shared_data)
    report = store.ingest(read_folder(root), source="bad", max_bytes=10_000_000)
    reasons = {
        r["origin"]: r["reason"].split(":")[0]
        for r in store.query("select origin, reason from rejected").to_pylist()
    }
    assert reasons == {
        "junk/truncated.jpg": "truncated",
        "junk/zero.jpg": "empty",
        "junk/corrupt.jpg": "corrupt",
        "junk/garbage.png": "corrupt",
        "junk/duplicate.jpg": "duplicate_of",
        "junk/notes.txt": "unsupported_format",
        "junk/bomb.png": "decompression_bomb",
    }
    assert (report.read, report.stored, report.rejected) == (11, 4, 7)
    gif = store.query("select * from objects where origin = 'good/animated.gif'").to_pylist()
    assert gif[0]["image_format"] == "gif"  # multi-frame GIF: stored whole, first frame checked
    [conflict] = store.stats()["label_conflicts"]  # the copy sits under another class folder
    assert (conflict["kept_label"], conflict["raw_label"]) == ("good", "junk")


def test_too_large_file_is_rejected(tmp_path, shared_data):
    img = next((shared_data / "isiis_ndsb" / "amphipods").glob("*.jpg"))
    store = ObjectStore(tmp_path / "store")
    records = [Record(origin="big.jpg", image=img.read_bytes())]
    report = store.ingest(records, source="s", max_bytes=100)
    assert report.reasons == {"too_large": 1}


def test_invalid_source_name_is_refused(tmp_path):
    with pytest.raises(StoreError, match="invalid source name"):
        ObjectStore(tmp_path).ingest([], source="../escape")


def test_duplicates_across_sources_are_stored_once(tmp_path, shared_data):
    store = ObjectStore(tmp_path / "store")
    vliz = shared_data / "flowcam_vliz"
    first = store.ingest(read_folder(vliz), source="vliz")
    again = store.ingest(read_folder(vliz), source="vliz-copy")
    assert (first.stored, again.stored, again.rejected) == (105, 0, 105)
    assert again.label_conflicts == 0  # same labels: duplicates, but no conflict
    assert store.stats()["read"] == 210
    [message] = {r["message"] for r in store.query("select message from rejected").to_pylist()}
    assert message == "identical to an object already stored in 'vliz'"


@pytest.mark.parametrize(
    ("folder", "read", "stored", "labelled"),
    [
        ("flowcam_protist/classes", 3000, 3000, 3000),
        ("flowcam_vliz", 105, 105, 105),
        # 925 images (921 listed in labels.csv) + LICENSE + IFCB_image_wiki.csv
        ("ifcb_whoi", 927, 925, 921),
        # training_labels.csv + test_labels.csv (io/images/… paths); crop.txt, 2 feature tables
        ("zooscan_ecotaxa", 403, 400, 400),
    ],
)
def test_real_folders_account_for_every_file(tmp_path, shared_data, folder, read, stored, labelled):
    root = shared_data / folder
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.endswith("labels.csv")]
    store = ObjectStore(tmp_path / "store")
    report = store.ingest(read_folder(root), source="s")
    assert report.read == len(files) == read
    assert (report.stored, report.rejected) == (stored, read - stored)
    n = store.query("select count(raw_label) n from objects").to_pylist()[0]["n"]
    assert n == labelled


def test_ifcb_whoi_labels_csv_columns(tmp_path, shared_data):
    store = ObjectStore(tmp_path / "store")
    store.ingest(read_folder(shared_data / "ifcb_whoi"), source="whoi")
    row = store.query(
        "select raw_label, extra from objects"
        " where origin = 'images/D20141116T041709_IFCB102_02845.jpg'"
    ).to_pylist()[0]
    assert row["raw_label"] == "Thalassiosira sp aff mala"
    assert json.loads(row["extra"]) == {"group": "Diatoms"}


def test_split_layout_and_label_csv_with_missing_rows(tmp_path, shared_data):
    src = sorted((shared_data / "isiis_ndsb" / "amphipods").glob("*.jpg"))[:4]
    root = tmp_path / "split"
    for i, p in enumerate(src):
        d = root / ("train" if i < 2 else "validation") / "amphipods"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / p.name)
    store = ObjectStore(tmp_path / "store")
    store.ingest(read_folder(root), source="split")
    rows = store.query(
        "select raw_label, json_extract_string(extra, '$.upstream_split') split from objects"
    ).to_pylist()
    assert sorted(r["split"] for r in rows) == ["train", "train", "val", "val"]
    assert {r["raw_label"] for r in rows} == {"amphipods"}

    # label files: zooscan-style `io/images/...` paths, one per split, plus a missing file
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    for p in src:
        shutil.copy(p, flat / "images" / p.name)
    (flat / "training_labels.csv").write_text(
        "id,img_path,label\n"
        + "".join(f"{i},io/images/{p.name},Amphipoda\n" for i, p in enumerate(src[:3]))
        + "9,io/images/missing.jpg,Amphipoda\n"
    )
    report = store.ingest(read_folder(flat, labels=[flat / "training_labels.csv"]), source="flat")
    assert (report.read, report.stored, report.rejected) == (5, 0, 5)  # 4 dups + 1 missing
    assert report.reasons == {"duplicate_of": 4, "missing_file": 1}


def test_parallel_ingest_equals_serial(tmp_path, shared_data):
    root = shared_data / "flowcam_vliz"
    tables = []
    for workers in (1, 2):
        store = ObjectStore(tmp_path / f"w{workers}")
        store.ingest(read_folder(root), source="vliz", workers=workers)
        tables.append(
            store.query("select * exclude (ingested_at) from objects order by origin").to_pylist()
        )
    assert tables[0] == tables[1]


KILL_SCRIPT = """
import sys
from planktonzilla.readers.folder import read_folder
from planktonzilla.store import ObjectStore
ObjectStore(sys.argv[1]).ingest(read_folder(sys.argv[2]), source="killed", shard_rows=50)
"""


def test_sigkill_mid_ingest_then_rerun_completes_exactly(tmp_path, shared_data):
    root = tmp_path / "tree"
    classes = ["copepod_cyclopoid_oithona", "chaetognath_other", "chaetognath_non_sagitta"]
    expected = 0
    for name in classes:
        (root / name).mkdir(parents=True)
        for p in sorted((shared_data / "isiis_ndsb" / name).glob("*.jpg")):
            (root / name / p.name).symlink_to(p)
            expected += 1
    store_dir = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(store_dir), str(root)])
    shards = store_dir / "objects" / "killed"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(shards.glob("*.parquet"))) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(shards.glob("*.parquet")))
    assert written >= 4, "the ingest finished or never started before the kill"
    store = ObjectStore(store_dir)
    assert store.manifest()["sources"] == {}  # the killed run never published a manifest

    report = store.ingest(read_folder(root), source="killed")
    assert report.skipped >= 4 * 50 and report.skipped + report.read == expected
    # the 271.jpg / 14864.jpg pair is the one duplicate among these classes
    q = store.query(
        "select (select count(*) from objects) stored,"
        " (select count(distinct object_id) from objects) ids,"
        " (select count(distinct origin) from objects) origins,"
        " (select count(*) from rejected) rejected"
    ).to_pylist()[0]
    assert q == {
        "stored": expected - 1,
        "ids": expected - 1,
        "origins": expected - 1,
        "rejected": 1,
    }
    again = store.ingest(read_folder(root), source="killed")
    assert (again.read, again.skipped) == (0, expected)


def test_concurrent_ingest_is_refused(tmp_path):
    import fcntl

    store = ObjectStore(tmp_path / "store")
    store.path.mkdir()
    with open(store.path / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="another process"):
            store.ingest([], source="s")


def test_metadata_only_objects(tmp_path):
    store = ObjectStore(tmp_path / "store")
    records = [Record(origin=f"row{i}", image=None, source_object_id=f"obj{i}") for i in range(3)]
    records.append(Record(origin="row9", image=None))  # no id: cannot be identified
    records.append(Record(origin="row10", image=None, source_object_id="obj1"))
    report = store.ingest(records, source="meta", instrument="UVP5")
    assert (report.stored, report.rejected) == (3, 2)
    assert report.reasons == {"bad_row": 1, "duplicate_of": 1}
    rows = store.query("select image, width, instrument from objects").to_pylist()
    assert rows[0] == {"image": None, "width": None, "instrument": "UVP5"}


def test_lineage_is_joined_at_read_time(tmp_path, shared_data):
    store = ObjectStore(tmp_path / "store")
    store.ingest(read_folder(shared_data / "flowcam_vliz"), source="vliz-own")
    # a user's source: its labels are resolved at ingest into taxonomy/<source>.parquet
    assert (store.path / "taxonomy" / "vliz-own.parquet").is_file()
    assert store.manifest()["taxonomy_version"].startswith("1.")
    rows = store.query(
        "select distinct raw_label, taxon, phylum, class, root_class, taxonomy_status"
        " from objects order by raw_label"
    ).to_pylist()
    by_label = {r["raw_label"]: r for r in rows}
    assert by_label["Tripos"]["taxon"] == "Tripos"
    assert by_label["Tripos"]["class"] == "Dinophyceae"
    assert by_label["Dinoflagellata"]["taxon"] == "Dinophyceae"  # a synonym, merged
    assert by_label["Ciliophora"]["phylum"] == "Ciliophora"
    assert all(r["taxonomy_status"] == "resolved" for r in rows)

    # the mapping lives beside the shards: dropping it changes the view, not a shard
    before = store.manifest()["sources"]
    (store.path / "taxonomy" / "vliz-own.parquet").unlink()
    assert store.query("select count(taxon) n from objects").to_pylist() == [{"n": 0}]
    assert store.manifest()["sources"] == before
    # the shipped mapping covers the public collections' own names
    tree = tmp_path / "tree" / "shrimp_zoea"
    tree.mkdir(parents=True)
    for p in sorted((shared_data / "isiis_ndsb" / "shrimp_zoea").glob("*.jpg"))[:5]:
        (tree / p.name).symlink_to(p)
    store.ingest(read_folder(tree.parent), source="planktonset1.0")
    assert not (store.path / "taxonomy" / "planktonset1.0.parquet").exists()
    [row] = store.query(
        "select distinct taxon, qualifier from objects where source = 'planktonset1.0'"
    ).to_pylist()
    assert row == {"taxon": "Decapoda", "qualifier": "larvae"}


def test_retry_rejected_reads_repaired_inputs_again(tmp_path):
    """An input repaired in place is read again with retry_rejected; its old rejection gives
    way to the new outcome (read = stored + rejected, no origin twice), and a run killed
    half-way through a retry is completed by the next plain run."""
    from planktonzilla.store.verify import verify_store

    folder = tmp_path / "images" / "cop"
    folder.mkdir(parents=True)
    for i in range(6):
        buf = io.BytesIO()
        Image.new("L", (10 + i, 10), i * 30).save(buf, format="PNG")
        (folder / f"{i}.png").write_bytes(buf.getvalue() if i % 2 else b"broken")
    store = ObjectStore(tmp_path / "store")
    first = store.ingest(read_folder(folder.parent), source="s")
    assert (first.stored, first.rejected) == (3, 3)
    for i in (0, 2, 4):  # repaired in place
        buf = io.BytesIO()
        Image.new("L", (10 + i, 10), i * 30).save(buf, format="PNG")
        (folder / f"{i}.png").write_bytes(buf.getvalue())
    assert store.ingest(read_folder(folder.parent), source="s").read == 0  # plain rerun

    def killed_after(n):
        for k, item in enumerate(read_folder(folder.parent)):
            if k == n:
                raise RuntimeError("killed")
            yield item

    with pytest.raises(RuntimeError):  # dies after re-reading one repaired input
        store.ingest(killed_after(2), source="s", retry_rejected=True, shard_rows=1)
    done = store.ingest(read_folder(folder.parent), source="s")  # plain: completes the retry
    assert done.retried == 2 and done.stored == 2
    origins = store.query("SELECT origin FROM objects UNION ALL SELECT origin FROM rejected")
    assert sorted(origins["origin"].to_pylist()) == sorted(f"cop/{i}.png" for i in range(6))
    stats = store.stats()
    assert (stats["stored"], stats["rejected"]) == (6, 0)
    assert verify_store(store.path, deep=True).ok
