"""Counts and concentrations per sample x taxon on real stores (IFCB bins, a ZooScan export
with acq_sub_part, a UVP5 profile with its EcoPart PAR file), and the classifier-error
corrections where the truth is known (synthetic counts from a known confusion matrix)."""

import csv
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.ecology.abundance import (
    ALL_OBJECTS,
    abundance,
    bootstrap_interval,
    pacc_interval,
    poisson_interval,
    read_table,
    write_table,
)
from planktonzilla.ecology.volumes import read_samples, write_samples
from planktonzilla.exceptions import InputError
from planktonzilla.readers.ecotaxa import read_ecotaxa
from planktonzilla.readers.ifcb import read_ifcb
from planktonzilla.store import ObjectStore
from pz_testing import SHARED_DATA

DATA = SHARED_DATA
TARA = DATA / "ecotaxa_exports/tara_zooscan/export.tsv"
UVP = DATA / "ecotaxa_exports/uvp5_ecopart"
IFCB = DATA / "ifcb_bins"


@pytest.fixture(scope="module")
def tara(tmp_path_factory):
    store = ObjectStore(tmp_path_factory.mktemp("tara") / "store")
    store.ingest(read_ecotaxa(TARA, missing_images="metadata"), source="tara")
    rows, _ = read_samples(TARA)
    write_samples(store, "tara", rows)
    return store


@pytest.fixture(scope="module")
def uvp(tmp_path_factory):
    """One BATS profile: its ZOO objects, its PAR file and the metadata summary."""
    folder = tmp_path_factory.mktemp("uvp") / "export"
    folder.mkdir()
    for pattern in ("*_bats361_ctd1_ZOO_raw_*", "*_bats361_ctd1_PAR_raw_*", "*metadata_summary*"):
        for f in UVP.glob(pattern):
            shutil.copy(f, folder / f.name)
    store = ObjectStore(folder.parent / "store")
    store.ingest(read_ecotaxa(folder), source="bats")
    rows, problems = read_samples(folder)
    assert not problems
    write_samples(store, "bats", rows)
    return store


def test_zooscan_concentration_is_count_times_sub_part_over_filtered_volume(tara):
    with open(TARA, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    acq = rows[0]["acq_id"]
    mine = [r for r in rows if r["acq_id"] == acq]
    expected = len(mine) * float(mine[0]["acq_sub_part"]) / float(mine[0]["sample_tot_vol"])
    table = abundance(tara, rank="genus", unit="m3")
    total = [r for r in table.to_pylist() if r["subsample_id"] == acq and r["rank"] == "total"]
    assert len(total) == 1 and total[0]["count"] == len(mine)
    assert total[0]["concentration"] == pytest.approx(expected)  # individuals per m3
    assert total[0]["volume_method"] == "ecotaxa_acq_sub_part"
    lo, up = poisson_interval([len(mine)])
    assert total[0]["lower"] == pytest.approx(lo[0] * expected / len(mine))
    assert total[0]["upper"] == pytest.approx(up[0] * expected / len(mine))


def test_lineage_aware_counts_and_zeros(uvp):
    genus = abundance(uvp, rank="genus", unit="m3").to_pylist()
    family = abundance(uvp, rank="family", unit="m3").to_pylist()
    # every unit lists every taxon of the source: absent taxa are zeros, not missing rows
    units = {r["subsample_id"] for r in genus}
    taxa = {(r["taxon"], r["rank"]) for r in genus}
    assert len(genus) == len(units) * len(taxa)

    # a count at genus also counts for its family: a family's total over the profile is its
    # genera's plus the objects identified to that family only
    def total(rows, rank, name):
        return sum(r["count"] for r in rows if r["rank"] == rank and r["taxon"] == name)

    con = uvp.connect()
    pairs = con.execute(
        "SELECT DISTINCT family, genus FROM objects WHERE genus IS NOT NULL AND family IS NOT NULL"
    ).fetchall()
    con.close()
    assert pairs
    for fam in {f for f, _ in pairs}:
        genera = {g for f, g in pairs if f == fam}
        expected = sum(total(genus, "genus", g) for g in genera) + total(genus, "family", fam)
        assert total(family, "family", fam) == expected
    # the totals match the objects
    n = uvp.query("SELECT count(*) AS n FROM objects").column("n")[0].as_py()
    assert sum(r["count"] for r in genus if r["taxon"] == ALL_OBJECTS) == n


def test_uvp_depth_bins_use_the_par_volume(uvp):
    rows = abundance(uvp, rank="class", unit="L").to_pylist()
    top = next(r for r in rows if r["subsample_id"] == "0-5" and r["taxon"] == ALL_OBJECTS)
    n = (
        uvp.query("SELECT count(*) AS n FROM objects WHERE depth_min >= 0 AND depth_min < 5")
        .column("n")[0]
        .as_py()
    )
    assert top["count"] == n
    assert top["concentration"] == pytest.approx(n / (top["volume_ml"] / 1000))
    assert top["volume_method"] == "ecopart_par"


def test_ifcb_bins_without_objects_show_volume_and_zero(tmp_path):
    store = ObjectStore(tmp_path / "store")
    store.ingest(read_ifcb([IFCB / "smhi/bins"]), source="smhi")
    rows, _ = read_samples([IFCB / "smhi/bins", IFCB / "pyifcb/empty/D20150411T205456_IFCB012.hdr"])
    write_samples(store, "smhi", rows)
    table = {r["sample_id"]: r for r in abundance(store, rank="genus").to_pylist()}
    empty = table["D20150411T205456_IFCB012"]
    assert empty["count"] == 0 and empty["volume_ml"] > 0 and empty["concentration"] == 0
    full = table["D20220519T124533_IFCB134"]
    n = store.query("SELECT count(*) AS n FROM objects").column("n")[0].as_py()
    assert full["count"] == n and full["concentration"] == pytest.approx(
        n / (full["volume_ml"] / 1000)
    )


def test_predictions_confident_rank_and_acc(uvp, tmp_path):
    objects = uvp.query(
        'SELECT object_id, taxon, kingdom, phylum, class, "order", family, genus, species'
        " FROM objects WHERE taxon IS NOT NULL"
    ).to_pylist()
    labels = sorted({o["taxon"] for o in objects})
    rows = []
    for i, o in enumerate(objects):
        unsure = i % 4 == 0  # every fourth prediction is confident only to its phylum
        rows.append(
            {
                **o,
                "label": o.pop("taxon"),
                "confident_rank": "phylum" if unsure else "species",
                "confident_probability": 0.5 if unsure else 0.875,
                "error": None,
            }  # fmt: skip
        )
    predictions = tmp_path / "pred.parquet"
    pq.write_table(pa.Table.from_pylist(rows), predictions)
    table = abundance(uvp, rank="class", unit="m3", predictions=predictions).to_pylist()
    assert {r["method"] for r in table} == {"predicted"}
    by_rank = {}
    for r in table:
        if r["rank"] != "total":
            by_rank[r["rank"]] = by_rank.get(r["rank"], 0) + r["count"]
    unsure = sum(1 for i, o in enumerate(rows) if i % 4 == 0 and o["phylum"])
    assert by_rank["phylum"] >= unsure  # the unsure ones count at their confident rank
    # the score is the mean probability of what a row counts (0.875 and 0.5 are exact floats)
    scores = {r["score"] for r in table if r["count"] and r["rank"] == "class"}
    assert scores == {0.875}

    confusion = tmp_path / "results.json"  # a perfect model: ACC changes nothing
    eye = (np.eye(len(labels)) * 50).astype(int).tolist()
    confusion.write_text(json.dumps({"confusion": {"labels": labels, "matrix": eye}}))
    corrected = abundance(
        uvp, rank="class", unit="m3", predictions=predictions, correction="acc",
        confusion=confusion, n_boot=20,
    ).to_pylist()  # fmt: skip
    acc = [r for r in corrected if r["method"] == "acc"]
    # a perfect model of labels that are the store's: the corrected counts are the labels'
    # counts (ACC works on classes, so no confident-rank coarsening), inside their interval
    labelled = abundance(uvp, rank="class", unit="m3").to_pylist()
    truth = {(r["subsample_id"], r["taxon"], r["rank"]): r["count"] for r in labelled}
    for r in acc:
        assert r["count"] == pytest.approx(
            truth[r["subsample_id"], r["taxon"], r["rank"]], abs=1e-6
        )
        assert r["lower"] <= r["concentration"] * (1 + 1e-9) and r["concentration"] <= r[
            "upper"
        ] * (1 + 1e-9)
    with pytest.raises(InputError, match="confusion"):
        abundance(uvp, predictions=predictions, correction="acc")
    stranger = tmp_path / "other.parquet"
    pq.write_table(pa.table({"object_id": ["f" * 64], "label": ["Copepoda"]}), stranger)
    with pytest.raises(InputError, match="none of its 1 object_ids"):
        abundance(uvp, predictions=stranger)


# --------------------------------------------------------- corrections where the truth is known

M = np.array([[0.85, 0.10, 0.05], [0.15, 0.75, 0.10], [0.05, 0.15, 0.80]])
TRUE = np.array([300, 150, 50])


def test_acc_intervals_cover_the_true_counts_at_the_nominal_rate():
    rng = np.random.default_rng(7)
    hits = checks = 0
    raw_hits, estimates = np.zeros(3), []
    for _ in range(120):
        confusion = np.stack([rng.multinomial(200, row) for row in M])  # validation: 200/class
        predicted = sum(rng.multinomial(n, M[i]) for i, n in enumerate(TRUE))
        est, lo, up = bootstrap_interval(predicted, confusion, n_boot=150, rng=rng)
        estimates.append(est)
        hits += int(((lo <= TRUE) & (up >= TRUE)).sum())
        plo, pup = poisson_interval(predicted)  # the uncorrected counts' interval
        raw_hits += (plo <= TRUE) & (pup >= TRUE)
        checks += 3
    # 360 checks at 95 %: binomial sd 1.1 %; [0.90, 0.99] is more than 4 sd either side
    assert 0.90 <= hits / checks <= 0.99
    # uncorrected, the rare class is counted 70 for 50 on average (Mᵀn): its counts' own
    # interval mostly misses the truth, while the corrected mean lands on it
    assert raw_hits[2] / 120 < 0.5
    # 120 trials: the sd of a mean estimate is about 2 (class 0) or less
    assert np.abs(np.mean(estimates, axis=0) - TRUE).max() < 6


def test_pacc_intervals_cover_the_true_counts_at_the_nominal_rate():
    rng = np.random.default_rng(11)
    alpha = 4.0 * np.array([[6, 1, 0.5], [1.5, 5, 1], [0.5, 1.5, 6]])  # class-wise Dirichlet

    def objects(counts):
        truth = np.repeat(np.arange(3), counts)
        return np.stack([rng.dirichlet(alpha[i]) for i in truth]), truth

    hits = checks = 0
    for _ in range(60):
        val_probs, val_true = objects([200, 200, 200])
        probs, _ = objects(TRUE)
        est, lo, up = pacc_interval(probs, val_probs, val_true, n_boot=100, rng=rng)
        hits += int(((lo <= TRUE) & (up >= TRUE)).sum())
        checks += 3
    # 180 checks at 95 %: sd 1.6 %; 0.86 is more than 5 sd below
    assert 0.86 <= hits / checks <= 1.0


def test_table_round_trip_and_cli(tmp_path):
    runner = CliRunner()
    store = tmp_path / "store"
    result = runner.invoke(
        app, ["ingest", "ifcb", str(IFCB / "smhi/bins"), "--store", str(store), "--source", "s"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["samples", str(IFCB / "smhi/bins"), "-s", str(store), "--source", "s"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "ab.csv"
    result = runner.invoke(
        app, ["abundance", "-s", str(store), "-o", str(out), "--plot", str(tmp_path / "ab.png")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ab.png").read_bytes()[:4] == b"\x89PNG"
    table = read_table(out)
    assert table.num_rows >= 1 and table.column("volume_method")[0].as_py() == "ifcb_header"
    write_table(table, tmp_path / "ab.parquet")
    assert read_table(tmp_path / "ab.parquet").to_pylist() == table.to_pylist()
    result = runner.invoke(app, ["abundance", "-s", str(store), "-o", str(out), "--rank", "x"])
    assert result.exit_code == 2 and "unknown rank" in result.output


@pytest.mark.slow  # builds a (random-weight) model and loads torch
def test_a_model_run_on_the_fly(tmp_path, tiny_models):
    from planktonzilla.ecology.abundance import predict_store

    store = ObjectStore(tmp_path / "store")
    store.ingest(read_ifcb([IFCB / "smhi/bins"]), source="smhi")
    rows, _ = read_samples(IFCB / "smhi/bins")
    write_samples(store, "smhi", rows)
    model = tiny_models["supervised"]  # random weights: any class will do
    predictions = tmp_path / "pred.parquet"
    n = predict_store(
        store, model, predictions, where="source = 'smhi'", device="cpu", batch_size=7
    )
    stored = store.query("SELECT count(*) AS n FROM objects").column("n")[0].as_py()
    assert n == stored == pq.read_table(predictions).num_rows
    table = abundance(store, rank="order", predictions=predictions, where="source = 'smhi'")
    (total,) = [r for r in table.to_pylist() if r["rank"] == "total"]
    assert total["count"] == stored and total["method"] == "predicted"
    # each prediction counts once, at the order or at its confident coarser rank (or not at
    # all when no rank is confident)
    assert sum(r["count"] for r in table.to_pylist() if r["rank"] != "total") <= stored
