"""Sampled volumes from the instruments' own files in ../shared/data, each checked against the
numbers in the file itself (read here independently of planktonzilla's parsers)."""

import csv
import re
from pathlib import Path

import pytest

from planktonzilla.ecology.volumes import (
    IFCB_FLOW_ML_PER_MIN,
    ecopart_volumes,
    ecotaxa_volumes,
    flowcam_volume,
    ifcb_volume,
    read_samples,
    user_volumes,
    write_samples,
)
from planktonzilla.exceptions import InputError
from planktonzilla.store import ObjectStore
from planktonzilla.store.schema import SAMPLES
from pz_testing import SHARED_DATA

DATA = SHARED_DATA
IFCB = DATA / "ifcb_bins"


def _header_number(hdr: Path, key: str) -> float:
    m = re.search(rf"^{key}:\s*([-0-9.eE]+)", hdr.read_text(encoding="latin-1"), re.M)
    assert m, f"{hdr} has no {key}"
    return float(m.group(1))


def _complete_bins() -> list[Path]:
    return sorted(
        hdr
        for hdr in IFCB.rglob("*.hdr")
        if hdr.stat().st_size and all(hdr.with_suffix(s).is_file() for s in (".adc", ".roi"))
    )


def test_every_complete_new_format_ifcb_bin_matches_its_header():
    checked = 0
    for hdr in _complete_bins():
        if not hdr.stem.startswith("D"):
            continue
        row = ifcb_volume(hdr)
        look = _header_number(hdr, "runTime") - _header_number(hdr, "inhibitTime")
        # the community formula, from the header's own lines (ml/min x minutes)
        assert row.volume_ml == pytest.approx(0.25 * look / 60, rel=1e-12)
        assert row.volume_method == "ifcb_header"
        assert row.sample_id == hdr.stem and row.time_utc.year >= 2013
        checked += 1
    assert checked >= 4  # irfcb, smhi, pyifcb white and the empty-ROI bin


def test_ifcb_volumes_match_pyifcb_reference_values():
    # pyifcb's own test (ifcb/metrics/tests/test_ml_analyzed.py, TARGET_ML_ANALYZED) for these
    # two bins: the old one from its ADC trigger timings, the new one from its header.
    old = ifcb_volume(IFCB / "pyifcb/data/2012/IFCB5_2012_028/IFCB5_2012_028_081515.hdr")
    assert old.volume_method == "ifcb_adc"
    assert old.volume_ml == pytest.approx(0.003391470833333334, rel=1e-9)
    assert old.extra["look_time_s"] == pytest.approx(0.8139530000000001, rel=1e-9)
    assert old.extra["run_time_s"] == pytest.approx(1.251953, rel=1e-9)
    new = ifcb_volume(IFCB / "pyifcb/white/D2013/D201305/D20130526/D20130526T095207_IFCB013.hdr")
    assert new.volume_ml == pytest.approx(5.080841170833334, rel=1e-9)
    assert IFCB_FLOW_ML_PER_MIN == 0.25


def test_ifcb_bins_without_triggers():
    # a new-format bin with an empty ADC still has its header's run time: a volume, count 0
    new = ifcb_volume(IFCB / "pyifcb/empty/D20150411T205456_IFCB012.hdr")
    assert new.extra["triggers"] == 0
    assert new.volume_ml == pytest.approx(0.25 * (0.621083 - 0.037422) / 60, rel=1e-9)
    # an IFCB1-6 bin keeps its run time only in ADC rows: no volume, and it says why
    old = ifcb_volume(IFCB / "pyifcb/empty/IFCB5_2017_001_033645.hdr")
    assert old.volume_ml is None and "no triggers" in old.extra["issue"]
    with pytest.raises(InputError, match="empty header"):
        ifcb_volume(IFCB / "pyifcb/invalid/D20130101T101010_IFCB099.hdr")


def test_flowcam_runs_have_their_summary_volume():
    summaries = sorted(DATA.glob("flowcam_*/**/*_run_summary.txt"))
    assert len(summaries) >= 6
    for path in summaries:
        row = flowcam_volume(path)
        text = path.read_text(encoding="utf-8", errors="replace")
        imaged = float(re.search(r"Fluid Volume Imaged:\s*([0-9.]+)", text).group(1))
        assert row.volume_ml == imaged and row.volume_method == "flowcam_summary"
        assert row.sample_id == path.name.removesuffix("_run_summary.txt")
        csv_path = path.with_name(row.sample_id + "_summary.csv")
        if csv_path.is_file():  # VisualSpreadsheet's own concentration = particles / imaged
            with open(csv_path, newline="", encoding="utf-8", errors="replace") as fh:
                per_ml = float(next(r for r in csv.reader(fh) if r and r[0] == "Particles / ml")[1])
            # 1 % covers the 4 decimals of the .txt volume (0.0174 ml: ±0.3 %)
            assert row.extra["particle_count"] / row.volume_ml == pytest.approx(per_ml, rel=0.01)


def test_ecopart_par_volume_per_depth_bin():
    folder = DATA / "ecotaxa_exports/uvp5_ecopart"
    par = next(folder.glob("*_bats361_ctd1_PAR_raw_*.tsv"))
    images: dict[int, int] = {}
    with open(par, newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            images.setdefault(int(float(r["depth"])), int(r["imgcount"]))
    rows = {r.subsample_id: r for r in ecopart_volumes(par, bin_m=5)}
    top = {d: n for d, n in images.items() if d < 5}
    first = rows["0-5"]
    # acq_volimage of bats361_ctd1 in the export's metadata summary: 1.1 L per image
    assert first.volume_ml == pytest.approx(sum(top.values()) * 1.1 * 1000)
    assert first.extra["images"] == sum(top.values())
    assert (first.depth_min, first.depth_max, first.subsample_by) == (0, 5, "depth")
    assert first.lat == pytest.approx(32.33733) and first.instrument == "UVP5"
    assert sum(r.extra["images"] for r in rows.values()) == sum(images.values())


def test_ecotaxa_sub_part_volume_per_acquisition():
    path = DATA / "ecotaxa_exports/tara_zooscan/export.tsv"
    with open(path, newline="") as fh:
        first = next(csv.DictReader(fh, delimiter="\t"))
    rows = {(r.sample_id, r.subsample_id): r for r in ecotaxa_volumes(path)}
    row = rows[first["sample_id"], first["acq_id"]]
    volume_m3, sub_part = float(first["sample_tot_vol"]), float(first["acq_sub_part"])
    assert row.volume_ml == pytest.approx(volume_m3 * 1e6 / sub_part)
    assert row.fraction == pytest.approx(1 / sub_part) and row.subsample_by == "acq_id"
    assert len({s for s, _ in rows}) == 20  # the export's 20 samples, with their fractions


def test_samples_table_is_joined_at_read_time(tmp_path):
    store = ObjectStore(tmp_path / "store")
    empty = store.query("SELECT * FROM samples")
    assert empty.num_rows == 0 and empty.schema.names == SAMPLES.names
    rows, problems = read_samples([IFCB / "irfcb/data", IFCB / "pyifcb/invalid"])
    assert len(rows) == 3 and len(problems) == 1 and "empty header" in problems[0]
    assert write_samples(store, "smhi", rows) == 3
    # a rerun replaces rows by key, never duplicates; a user volume joins them
    assert write_samples(store, "smhi", rows + user_volumes(["bin_x"], 5.0)) == 4
    got = store.query("SELECT sample_id, volume_ml, volume_method FROM samples ORDER BY 1")
    assert got.column("volume_method").to_pylist() == ["ifcb_header"] * 3 + ["user"]
    assert not list(store.layout.samples.glob("*.tmp"))
    with pytest.raises(InputError):
        user_volumes(["x"], 0)
