"""Memory guards of bench/scale.py's fixes, at a small size: the dataset view is columnar
(dictionary-encoded text, ~130 bytes a row rather than ~1 KB of Python or plain strings), and
every store connection caps DuckDB's working memory so whole-store sorts, joins and windows
(splits, the view) spill to disk instead of growing with the store."""

import pyarrow as pa
import pytest

from planktonzilla.data.dataset import dataset_view
from planktonzilla.data.splits import make_split
from planktonzilla.store import ObjectStore
from planktonzilla.store.objectstore import DUCKDB_MEMORY
from planktonzilla.synthetic import synthetic_records


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ObjectStore:
    store = ObjectStore(tmp_path_factory.mktemp("scale") / "store")
    store.ingest(synthetic_records("ISIIS", per_class=40), source="synthetic-isiis")
    make_split(store, "stratified", seed=0)
    return store


def test_dataset_view_bytes_per_row(store):
    before = pa.total_allocated_bytes()
    view = dataset_view(store, "stratified")
    table = view.table
    # every column in Arrow's own memory: none pins a whole DuckDB-exported batch (those
    # buffers are DuckDB's, not counted by Arrow's pool)
    assert pa.total_allocated_bytes() - before >= 0.9 * table.nbytes
    assert table.num_rows > 200
    # 64-char object id (68 B with its offset) + split (~9 B) + 4 B per dictionary index of
    # the 12 other text columns + 4 B label index = ~129 B; plain strings would be ~300 B
    assert table.nbytes / table.num_rows < 160
    assert pa.types.is_dictionary(table.schema.field("label").type)
    assert view.counts()["train"] == view.side("train").num_rows
    labels = view.side("train")["label"].to_pylist()
    index = view.side("train")["label_index"].to_pylist()
    assert [view.classes[i] for i in index] == labels  # the index agrees with the label


def test_store_connections_cap_duckdb_memory(store, monkeypatch):
    def limit() -> str:
        con = store.connect()
        try:
            return con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
        finally:
            con.close()

    assert DUCKDB_MEMORY == "1GB" and limit() == "953.6 MiB"  # DuckDB shows 10^9 B in MiB
    monkeypatch.setenv("PZ_DUCKDB_MEMORY", "64MB")
    assert limit() == "61.0 MiB"
    assert make_split(store, "grouped", seed=0) == ["grouped"]  # a tiny budget still completes
