"""`pz verify`: each kind of damage is named, with exit 1; a clean store verifies; an ingest
never adopts a foreign part file nor blesses a damaged shard."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.exceptions import StoreError
from planktonzilla.records import Record
from planktonzilla.store import ObjectStore
from planktonzilla.store.verify import verify_store


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), value).save(buf, format="PNG")
    return buf.getvalue()


def _records(n: int, start: int = 0):
    return [Record(f"img{i}.png", _png(i), raw_label="Copepoda") for i in range(start, start + n)]


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(tmp_path / "store")
    s.ingest(_records(6), source="a")
    return s


def _shard(store) -> str:
    return store.manifest()["sources"]["a"]["shards"][0]["path"]


def _kinds(store, deep=False) -> set[str]:
    return {p.kind for p in verify_store(store.path, deep=deep).problems}


def _cli(store, *args):
    return CliRunner().invoke(app, ["verify", "--store", str(store.path), *args])


def test_clean_store_verifies(store):
    report = verify_store(store.path, deep=True)
    assert report.ok and report.shards == 1 and report.objects_hashed == 6
    result = _cli(store, "--deep")
    assert result.exit_code == 0, result.output


def test_flipped_byte_in_an_image_is_named_by_object(store):
    path = store.path / _shard(store)
    image = pq.read_table(path).column("image")[2].as_py()
    data = bytearray(path.read_bytes())
    data[data.find(image) + len(image) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert _kinds(store) == {"checksum"}
    report = verify_store(store.path, deep=True)
    named = [p.message for p in report.problems if p.kind == "image"]
    oid = pq.read_table(path).column("object_id")[2].as_py()
    assert len(named) == 1 and oid in named[0]
    result = _cli(store, "--deep")
    assert result.exit_code == 1 and oid in result.output


def test_flipped_byte_in_the_footer(store):
    path = store.path / _shard(store)
    data = bytearray(path.read_bytes())
    data[-12] ^= 0xFF  # inside the Parquet footer (the last 8 bytes: its length and magic)
    path.write_bytes(bytes(data))
    assert "checksum" in _kinds(store)


def test_stale_manifest_checksum(store):
    manifest = json.loads(store.layout.manifest.read_text())
    manifest["sources"]["a"]["shards"][0]["sha256"] = "0" * 64
    store.layout.manifest.write_text(json.dumps(manifest))
    assert _kinds(store) == {"checksum"}


def test_missing_shard_and_missing_manifest(store):
    (store.path / _shard(store)).unlink()
    assert _kinds(store) == {"missing"}
    with pytest.raises(StoreError, match="missing"):
        store.ingest(_records(1, 50), source="a")  # never written over a damaged store


def test_foreign_part_file_is_named_and_never_adopted(store):
    shard = store.path / _shard(store)
    foreign = shard.with_name("part-00007.parquet")
    shutil.copy(shard, foreign)
    assert _kinds(store) == {"foreign"}
    report = store.ingest(_records(2, 10), source="a")
    assert report.stored == 2 and report.rejected == 0
    listed = [s["path"] for s in store.manifest()["sources"]["a"]["shards"]]
    assert foreign.relative_to(store.path).as_posix() not in listed
    ids = store.query("select object_id from objects").column(0).to_pylist()
    assert len(ids) == len(set(ids)) == 8  # no duplicate rows followed
    assert _kinds(store) == {"foreign"}


def test_shard_of_an_interrupted_ingest_is_adopted_by_the_rerun(store):
    # what a killed ingest leaves: a shard on disk, journalled, not yet in the manifest
    shard = store.path / _shard(store)
    pending = shard.with_name("part-00001.parquet")
    table = pq.read_table(shard).slice(0, 0)
    pq.write_table(table, pending)
    rel = pending.relative_to(store.path).as_posix()
    store.layout.journal.write_text(json.dumps([rel]))
    assert _kinds(store) == {"unlisted"}
    store.ingest([], source="a")
    assert rel in [s["path"] for s in store.manifest()["sources"]["a"]["shards"]]
    assert not store.layout.journal.exists() and verify_store(store.path).ok


def test_missing_manifest_with_shards_is_an_error_not_an_empty_store(store):
    store.layout.manifest.unlink()
    with pytest.raises(StoreError, match="manifest.json is missing"):
        store.stats()
    result = CliRunner().invoke(app, ["stats", "--store", str(store.path)])
    assert result.exit_code == 2 and "manifest.json is missing" in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message, no traceback
    assert _kinds(store) == {"manifest", "foreign"}
