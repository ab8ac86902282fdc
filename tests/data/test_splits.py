"""Split schemes (planktonzilla.data.splits), the `splits` view, the dataset view
(planktonzilla.data.dataset) and `pz split` / `pz splits`, on small stores built from ../shared/data
and the synthetic sample."""

import csv
import shutil
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.data.dataset import RANKS, dataset_view
from planktonzilla.data.splits import (
    SIDES,
    SplitError,
    list_splits,
    make_split,
    read_split,
    split_info,
    split_path,
)
from planktonzilla.readers.folder import read_folder
from planktonzilla.readers.ifcb import read_ifcb
from planktonzilla.store import ObjectStore
from planktonzilla.synthetic import INSTRUMENTS, synthetic_records

SOURCES = {
    "zooscan",  # no licence stated, upstream train/test from its label CSVs
    "vliz",  # Apache-2.0
    "smhi",  # CC-BY-NC-4.0, IFCB ROIs without a sample id
    "ifcb",  # IFCB bins: sample_id = bin id, unlabelled
    *(f"synthetic-{name.lower()}" for name in INSTRUMENTS),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
    store = ObjectStore(tmp_path_factory.mktemp("splits") / "store")
    reports = [
        store.ingest(
            read_folder(shared_data / "zooscan_ecotaxa"), source="zooscan", instrument="ZooScan"
        ),
        store.ingest(
            read_folder(shared_data / "flowcam_vliz"),
            source="vliz",
            instrument="FlowCam",
            license="Apache-2.0",
        ),
        store.ingest(
            read_folder(shared_data / "ifcb_bins" / "smhi" / "training_data"),
            source="smhi",
            instrument="IFCB",
            license="CC-BY-NC-4.0",
        ),
        store.ingest(read_ifcb(shared_data / "ifcb_bins"), source="ifcb", instrument="IFCB"),
    ]
    for name in INSTRUMENTS:
        reports.append(
            store.ingest(synthetic_records(name, per_class=8), source=f"synthetic-{name.lower()}")
        )
    assert all(r.ok and r.stored for r in reports)
    return store


@pytest.fixture
def store(built, tmp_path):
    """A private copy of the built store: tests write split tables freely."""
    shutil.copytree(built.path, tmp_path / "store")
    return ObjectStore(tmp_path / "store")


def rows(store, sql):
    return store.query(sql).to_pylist()


def eligible(store, where="true"):
    sql = f"select object_id from objects where image_format is not null and ({where})"
    return {r["object_id"] for r in rows(store, sql)}


def assignment(store, name):
    table = read_split(store, name)
    ids = table["object_id"].to_pylist()
    assert len(ids) == len(set(ids)), f"{name}: an object is on two sides"
    assert set(table["split"].to_pylist()) <= set(SIDES)
    return dict(zip(ids, table["split"].to_pylist(), strict=True))


# ------------------------------------------------------------------------------ schemes
def test_every_scheme_is_disjoint_and_complete(store):
    everything = eligible(store)
    assert len(everything) == store.query("select count(*) n from objects").to_pylist()[0]["n"]
    names = [
        n for scheme in ("stratified", "grouped", "loso", "loio") for n in make_split(store, scheme)
    ]
    names += make_split(store, "upstream")
    assert sorted(names) == list_splits(store)
    with_instrument = eligible(store, "instrument is not null")
    with_upstream = eligible(store, "json_extract_string(extra, '$.upstream_split') is not null")
    for name in names:
        sides = assignment(store, name)
        expected = (
            with_upstream
            if name == "upstream"
            else with_instrument
            if name.startswith("loio-")
            else everything
        )
        assert set(sides) == expected, name
        if name != "upstream":
            assert set(sides.values()) == set(SIDES), name
    # sorted by object id, parameters recorded
    table = read_split(store, "stratified")
    assert table["object_id"].to_pylist() == sorted(table["object_id"].to_pylist())
    info = split_info(store, "stratified")
    assert info["family"] == "stratified" and info["seed"] == 0
    assert info["manifest_hash"] == store.manifest_hash()
    assert not list(split_path(store, "stratified").parent.glob("*.tmp"))


def test_stratified_fractions_and_small_classes_go_to_train(store):
    make_split(store, "stratified", min_per_class=20)
    sides = assignment(store, "stratified")
    strata = defaultdict(list)
    for r in rows(store, "select object_id, source, coalesce(taxon, raw_label, '') k from objects"):
        strata[(r["source"], r["k"])].append(sides[r["object_id"]])
    for (source, key), placed in strata.items():
        counts = Counter(placed)
        if len(placed) < 20:  # synthetic classes (8 per source), vliz's smaller ones, smhi
            assert counts == {"train": len(placed)}, (source, key)
        else:  # n * 0.1 rounded up or down
            for side in ("val", "test"):
                assert abs(counts[side] - len(placed) * 0.1) < 1, (source, key, counts)
    # ZooScan: 4 classes x 100 images: exactly 10 / 10 / 80 each
    for key in ("Cladocera", "Copepoda", "Siphonophorae", "detritus"):
        assert Counter(strata[("zooscan", key)]) == {"train": 80, "val": 10, "test": 10}
    make_split(store, "stratified", min_per_class=5)  # the default: synthetic classes split too
    sides = assignment(store, "stratified")
    synthetic = eligible(store, "source like 'synthetic-%'")
    assert {sides[o] for o in synthetic} == set(SIDES)


@pytest.mark.parametrize("scheme", ["stratified", "grouped", "loso"])
def test_deterministic_for_a_seed_different_for_another(store, scheme):
    first = make_split(store, scheme, seed=7)
    a = {n: read_split(store, n) for n in first}
    bytes_a = {n: split_path(store, n).read_bytes() for n in first}
    assert make_split(store, scheme, seed=7) == first
    for name in first:
        assert read_split(store, name).equals(a[name])
        assert split_path(store, name).read_bytes() == bytes_a[name]  # byte-identical
    make_split(store, scheme, seed=8)
    assert any(not read_split(store, n).equals(a[n]) for n in first)


def test_grouped_never_shares_a_sample_across_sides(store):
    make_split(store, "grouped", seed=3)
    sides = assignment(store, "grouped")
    by_sample = defaultdict(set)
    for r in rows(store, "select object_id, sample_id from objects where sample_id is not null"):
        by_sample[r["sample_id"]].add(sides[r["object_id"]])
    assert len(by_sample) == 4 + 4 * len(INSTRUMENTS)  # 4 IFCB bins, 4 samples per instrument
    assert all(len(s) == 1 for s in by_sample.values()), by_sample
    placed = Counter(sides.values())
    assert set(placed) == set(SIDES)
    assert placed["train"] > placed["val"] and placed["train"] > placed["test"]
    # objects without a sample id (ZooScan, VLIZ, SMHI) are split stratified around the groups
    singles = eligible(store, "sample_id is null")
    assert {sides[o] for o in singles} == set(SIDES)
    # with the test share at zero, nothing lands in test
    make_split(store, "grouped", seed=3, test=0.0)
    assert "test" not in set(assignment(store, "grouped").values())


def test_loso_holds_out_exactly_one_source(store):
    names = make_split(store, "loso", seed=1)
    assert names == sorted(f"loso-{s}" for s in SOURCES)
    source_of = {
        r["object_id"]: r["source"] for r in rows(store, "select object_id, source from objects")
    }
    for name in names:
        held = name.removeprefix("loso-")
        sides = assignment(store, name)
        by_side = defaultdict(set)
        for oid, side in sides.items():
            by_side[side].add(source_of[oid])
        assert by_side["test"] == {held}
        assert held not in by_side["train"] | by_side["val"]
        assert by_side["train"] == SOURCES - {held}
        assert split_info(store, name)["held_out"] == {"source": held}
        n_val = sum(side == "val" for side in sides.values())
        n_rest = sum(side != "test" for side in sides.values())
        assert 0.05 < n_val / n_rest < 0.15


def test_loio_holds_out_one_instrument_with_file_safe_names(store):
    names = make_split(store, "loio")
    assert "loio-synthetic-ISIIS" in names and "loio-IFCB" in names
    instrument_of = {
        r["object_id"]: r["instrument"]
        for r in rows(store, "select object_id, instrument from objects")
    }
    for name in names:
        held = split_info(store, name)["held_out"]["instrument"]
        sides = assignment(store, name)
        test = {instrument_of[o] for o, s in sides.items() if s == "test"}
        rest = {instrument_of[o] for o, s in sides.items() if s != "test"}
        assert test == {held} and held not in rest
    ifcb = assignment(store, "loio-IFCB")  # both IFCB sources (bins + SMHI ROIs) held out
    assert {ifcb[o] for o in eligible(store, "source in ('ifcb', 'smhi')")} == {"test"}


def test_upstream_matches_the_collections_csv_split(store, shared_data):
    assert make_split(store, "upstream") == ["upstream"]
    sides = assignment(store, "upstream")
    origin = {
        r["object_id"]: r["origin"] for r in rows(store, "select object_id, origin from objects")
    }
    expected = {}
    for name, side in (("training_labels.csv", "train"), ("test_labels.csv", "test")):
        with open(shared_data / "zooscan_ecotaxa" / name) as fh:
            for row in csv.DictReader(fh):
                expected[row["img_path"].removeprefix("io/")] = side
    assert len(expected) == 400
    assert {origin[o]: s for o, s in sides.items()} == expected
    assert Counter(sides.values()) == {"train": 320, "test": 80}


def test_bad_requests_are_refused(store, tmp_path, shared_data):
    with pytest.raises(SplitError, match="unknown split scheme"):
        make_split(store, "random")
    with pytest.raises(SplitError, match="leave images for train"):
        make_split(store, "stratified", val=0.5, test=0.5)
    with pytest.raises(SplitError, match="no split 'nope'"):
        read_split(store, "nope")
    with pytest.raises(SplitError, match="invalid split name"):
        read_split(store, "../manifest")
    one = ObjectStore(tmp_path / "one")
    one.ingest(read_folder(shared_data / "flowcam_vliz"), source="vliz", instrument="FlowCam")
    with pytest.raises(SplitError, match="at least two sources"):
        make_split(one, "loso")
    with pytest.raises(SplitError, match="upstream split"):
        make_split(one, "upstream")
    assert list_splits(one) == []


# ------------------------------------------------------------------------------ the view
def test_splits_view_joins_at_read_time(store, tmp_path):
    assert rows(store, "select count(*) n from splits") == [{"n": 0}]  # none yet: empty view
    before = {p: p.read_bytes() for p in store.path.glob("objects/*/*.parquet")}
    manifest = store.manifest()
    make_split(store, "stratified")
    make_split(store, "upstream")
    (store.path / "splits" / "half.parquet.tmp").write_bytes(b"debris of a killed run")
    assert list_splits(store) == ["stratified", "upstream"]
    got = rows(
        store,
        "select s.scheme, s.split, count(*) n, count(distinct o.source) sources"
        " from splits s join objects o using (object_id) group by all order by all",
    )
    expected = []
    for name in ("stratified", "upstream"):
        table = read_split(store, name)
        for side, n in sorted(Counter(table["split"].to_pylist()).items()):
            expected.append((name, side, n))
    assert [(r["scheme"], r["split"], r["n"]) for r in got] == expected
    assert {r["sources"] for r in got if r["scheme"] == "upstream"} == {1}
    # object shards and the manifest are untouched
    assert {p: p.read_bytes() for p in store.path.glob("objects/*/*.parquet")} == before
    assert store.manifest() == manifest


def test_dataset_view_defaults_deepest_rank_plankton_only(store):
    make_split(store, "stratified")
    view = dataset_view(store, "stratified")
    t = view.table
    assert t.column_names == [
        "object_id", "split", "label", "label_index", "source", "instrument", "sample_id",
        *RANKS, "qualifier",
    ]  # fmt: skip
    assert view.scheme == "stratified" and view.manifest_hash == store.manifest_hash()
    assert view.filters["rank"] == "deepest" and view.filters["plankton_only"] is True
    assert view.split_info["family"] == "stratified"
    # classes sorted; label_index indexes them; lineages line up
    assert view.classes == sorted(set(t["label"].to_pylist()))
    labels, index = t["label"].to_pylist(), t["label_index"].to_pylist()
    assert all(view.classes[i] == label for i, label in zip(index, labels, strict=True))
    assert [c["name"] for c in view.class_lineages] == view.classes
    copepoda = view.class_lineages[view.classes.index("Copepoda")]
    assert (copepoda["phylum"], copepoda["class"], copepoda["rank"]) == (
        "Arthropoda",
        "Copepoda",
        "class",
    )
    assert copepoda["order"] is None
    # only living plankton with a resolved label: no detritus, no unlabelled IFCB ROIs
    info = {
        r["object_id"]: r
        for r in rows(store, "select object_id, taxon, root_class, plankton from objects")
    }
    assert all(
        info[o]["plankton"] and info[o]["root_class"] == "living"
        for o in t["object_id"].to_pylist()
    )
    assert "detritus" not in view.classes and "ifcb" not in set(t["source"].to_pylist())
    assert len(t) == len(eligible(store, "plankton and root_class = 'living'"))
    # sides
    assert sum(view.side(s).num_rows for s in SIDES) == len(t)
    assert set(view.side("val")["split"].to_pylist()) == {"val"}
    assert view.counts()["train"] == view.side("train").num_rows
    with pytest.raises(ValueError):
        view.side("training")
    # without the plankton filter, detritus and artefacts are classes too
    everything = dataset_view(store, "stratified", plankton_only=False)
    assert {"detritus", "bubble", "fiber"} <= set(everything.classes)
    living = dataset_view(store, "stratified", plankton_only=False, living_only=True)
    assert "detritus" not in living.classes and len(living.table) >= len(t)


def test_dataset_view_rank_truncation_drops_shallow_lineages(store):
    make_split(store, "stratified")
    deepest = dataset_view(store, "stratified")
    genus = dataset_view(store, "stratified", rank="genus")
    assert genus.table["label"].to_pylist() == genus.table["genus"].to_pylist()
    assert len(genus.table) == len(
        eligible(store, "plankton and root_class = 'living' and genus is not null")
    )
    assert len(genus.table) < len(deepest.table)
    assert (
        "Copepoda" not in genus.classes and "Tripos" in genus.classes
    )  # class-level lineage dropped
    # a species-level label (Mesodinium major) truncates to its genus
    assert "Mesodinium" in genus.classes
    for lineage in genus.class_lineages:
        assert lineage["rank"] == "genus" and lineage["species"] is None
        assert lineage["genus"] == lineage["name"] and lineage["family"] is not None
    phylum = dataset_view(store, "stratified", rank="phylum")
    assert "Arthropoda" in phylum.classes and "Chordata" in phylum.classes
    assert all(c["class"] is None for c in phylum.class_lineages)
    with pytest.raises(ValueError, match="rank must be"):
        dataset_view(store, "stratified", rank="tribe")


def test_dataset_view_min_per_class_counts_train_side(store):
    make_split(store, "loso")
    view = dataset_view(store, "loso-zooscan")
    train_labels = set(view.side("train")["label"].to_pylist())
    # classes never seen in train (ZooScan's Cladocera, Siphonophorae) are dropped everywhere
    assert set(view.side("test")["label"].to_pylist()) == {"Copepoda"} <= train_labels
    assert "Cladocera" not in view.classes
    zero_shot = dataset_view(store, "loso-zooscan", min_per_class=0)
    assert {"Cladocera", "Siphonophorae"} <= set(zero_shot.classes)
    make_split(store, "stratified")
    strict = dataset_view(store, "stratified", min_per_class=20)
    train = Counter(strict.side("train")["label"].to_pylist())
    assert set(strict.classes) == set(train) and min(train.values()) >= 20
    assert set(strict.table["label"].to_pylist()) == set(train)
    loose = dataset_view(store, "stratified")
    assert set(strict.classes) < set(loose.classes)
    assert strict.filters["min_per_class"] == 20


def test_dataset_view_licence_and_source_filters(store):
    make_split(store, "stratified")
    base = dataset_view(store, "stratified", plankton_only=False)
    sources = set(base.table["source"].to_pylist())
    assert {"zooscan", "vliz", "smhi"} <= sources
    commercial = dataset_view(store, "stratified", plankton_only=False, commercial_only=True)
    # NC (smhi) and unstated (zooscan: no licence) are dropped; Apache and CC0 kept
    assert set(commercial.table["source"].to_pylist()) == sources - {"zooscan", "smhi"}
    apache = dataset_view(store, "stratified", licenses=["Apache-2.0"])
    assert set(apache.table["source"].to_pylist()) == {"vliz"}
    unstated = dataset_view(store, "stratified", plankton_only=False, licenses=[None])
    assert set(unstated.table["source"].to_pylist()) == {"zooscan"}
    picked = dataset_view(store, "stratified", sources=["vliz", "smhi"])
    assert set(picked.table["source"].to_pylist()) == {"vliz", "smhi"}
    assert picked.filters["sources"] == ["smhi", "vliz"]
    with pytest.raises(SplitError, match="no split"):
        dataset_view(store, "grouped")


# ------------------------------------------------------------------------------ CLI
def test_cli_split_and_splits(store):
    runner = CliRunner()
    result = runner.invoke(app, ["splits", "--store", str(store.path)])
    assert result.exit_code == 0 and "no split tables" in result.output
    result = runner.invoke(
        app,
        [
            "split",
            "--store",
            str(store.path),
            "--scheme",
            "grouped",
            "--seed",
            "2",
            "--test",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "grouped" in result.output and "train" in result.output and "samples" in result.output
    assert split_info(store, "grouped")["seed"] == 2 and split_info(store, "grouped")["test"] == 0.2
    result = runner.invoke(app, ["split", "-s", str(store.path), "--scheme", "loso"])
    assert result.exit_code == 0, result.output
    assert "loso-zooscan" in result.output
    result = runner.invoke(app, ["splits", "--store", str(store.path)])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("grouped", "loso-vliz", "loso-smhi"))
    n = len(read_split(store, "grouped"))
    assert (
        f"{Counter(read_split(store, 'grouped')['split'].to_pylist())['train']:,}" in result.output
    )
    assert n == len(eligible(store))
    result = runner.invoke(
        app,
        ["split", "-s", str(store.path), "--scheme", "stratified", "--val", "0.6", "--test", "0.6"],
    )
    assert result.exit_code == 2 and "leave images for train" in result.output
    result = runner.invoke(app, ["split", "-s", str(store.path), "--scheme", "random"])
    assert result.exit_code != 0
    assert pq.read_schema(split_path(store, "grouped")).names == ["object_id", "split"]
