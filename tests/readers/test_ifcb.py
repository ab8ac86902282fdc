"""IFCB bins from ../shared/data/ifcb_bins: both naming schemes and ADC layouts, the broken-bin
cases, and labels from ifcb-analysis manual .mat files and from class folders."""

from __future__ import annotations

import io
import math
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from planktonzilla.readers.ifcb import parse_bin_name, parse_pid, read_ifcb, read_ifcb_labels
from planktonzilla.records import Record, Rejection

# (directory under ifcb_bins, bin id, ADC (0-based) width, height, start-byte columns)
COMPLETE_BINS = [
    ("pyifcb/data/2012/IFCB5_2012_028", "IFCB5_2012_028_081515", (11, 12, 13)),
    ("pyifcb/white/D2013/D201305/D20130526", "D20130526T095207_IFCB013", (15, 16, 17)),
    ("irfcb/data", "D20220522T003051_IFCB134", (15, 16, 17)),
    ("smhi/bins", "D20220519T124533_IFCB134", (15, 16, 17)),
]


def _adc_rois(adc: Path, cols: tuple[int, int, int]) -> dict[int, tuple[int, int, int]]:
    """roi number → (width, height, start byte), read independently of the reader."""
    out = {}
    for n, line in enumerate(adc.read_text().splitlines(), start=1):
        f = line.split(",")
        w, h, s = (int(float(f[i])) for i in cols)
        if w * h:
            out[n] = (w, h, s)
    return out


@pytest.fixture(scope="module")
def bins(shared_data: Path) -> Path:
    return shared_data / "ifcb_bins"


def test_bin_names():
    new = parse_bin_name("D20220522T003051_IFCB134")
    assert new.serial == "IFCB134" and new.schema == "new"
    assert new.time_utc == datetime(2022, 5, 22, 0, 30, 51, tzinfo=UTC)
    old = parse_bin_name("IFCB5_2012_028_081515")
    assert old.serial == "IFCB5" and old.schema == "old"
    assert old.time_utc == datetime(2012, 1, 28, 8, 15, 15, tzinfo=UTC)  # day 28 of 2012
    assert parse_bin_name("decoy") is None
    assert parse_bin_name("D20221322T003051_IFCB134") is None  # month 13
    assert parse_pid("D20220522T003051_IFCB134_00003") == ("D20220522T003051_IFCB134", 3)


@pytest.mark.parametrize(("folder", "bin_id", "cols"), COMPLETE_BINS)
def test_every_roi_of_a_complete_bin(bins: Path, folder: str, bin_id: str, cols):
    d = bins / folder
    expected = _adc_rois(d / f"{bin_id}.adc", cols)
    roi_bytes = (d / f"{bin_id}.roi").read_bytes()
    out = list(read_ifcb(d / f"{bin_id}.adc"))
    assert all(isinstance(r, Record) for r in out)
    assert len(out) == len(expected) > 0
    assert [r.extra["roi_number"] for r in out] == sorted(expected)
    for r in out:
        n = r.extra["roi_number"]
        w, h, start = expected[n]
        assert r.origin == r.source_object_id == f"{bin_id}_{n:05d}"
        assert r.sample_id == bin_id and r.instrument == "IFCB"
        assert r.time_utc == parse_bin_name(bin_id).time_utc
        assert r.extra["ifcb_serial"] == bin_id.split("_")[0 if bin_id.startswith("IFCB") else 1]
        im = Image.open(io.BytesIO(r.image))
        assert im.format == "PNG" and im.mode == "L" and im.size == (w, h)
        assert im.tobytes() == roi_bytes[start : start + w * h]  # lossless


def test_roi_orientation_matches_ifcb_analysis_export(bins: Path):
    """iRfcb's exported PNG of ROI 3 is the same picture (up to a contrast stretch)."""
    rec = {r.origin: r for r in read_ifcb(bins / "irfcb" / "data")}[
        "D20220522T003051_IFCB134_00003"
    ]
    ours = np.asarray(Image.open(io.BytesIO(rec.image)), dtype=float)
    png = bins / "irfcb/png2/Mesodinium_rubrum/D20220522T003051_IFCB134_00003.png"
    theirs = np.asarray(Image.open(png), dtype=float)
    assert ours.shape == theirs.shape
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999


def test_whole_tree_every_input_accounted_for(bins: Path):
    out = list(read_ifcb(bins))
    origins = [r.origin for r in out]
    assert len(origins) == len(set(origins))
    records = [r for r in out if isinstance(r, Record)]
    per_bin = Counter(r.sample_id for r in records)
    assert per_bin == {
        "IFCB5_2012_028_081515": 6,
        "D20130526T095207_IFCB013": 19,
        "D20220522T003051_IFCB134": 2,
        "D20220519T124533_IFCB134": 17,
    }
    rejected = {r.origin: r for r in out if isinstance(r, Rejection)}
    assert {o: r.reason for o, r in rejected.items()} == {
        "D20150411T205456_IFCB012": "empty_bin",  # header, 0-byte adc and roi
        "IFCB5_2017_001_033645": "empty_bin",  # header, 0-byte adc, 2-byte roi
        "D20130101T101010_IFCB099": "invalid_bin",  # all three files 0 bytes
        "IFCB5_2006_001_121212": "invalid_bin",
        "D20220522T000439_IFCB134": "partial_bin",  # hdr + adc, no roi
        "D20230810T113059_IFCB134": "partial_bin",
        "IFCB5_2012_028_081515#duplicate1": "duplicate_bin",  # pyifcb/partial copy
    }
    assert "header only" in rejected["IFCB5_2017_001_033645"].message
    assert ".roi file is missing" in rejected["D20230810T113059_IFCB134"].message
    assert "33 ROI" in rejected["D20230810T113059_IFCB134"].message
    assert "empty" in rejected["D20130101T101010_IFCB099"].message
    assert "pyifcb/partial" in rejected["IFCB5_2012_028_081515#duplicate1"].message


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("pyifcb/empty", "empty_bin"),
        ("pyifcb/partial", "partial_bin"),
        ("pyifcb/invalid", "invalid_bin"),
    ],
)
def test_broken_bin_folders(bins: Path, folder: str, reason: str):
    out = list(read_ifcb(bins / folder))
    assert out and all(isinstance(r, Rejection) and r.reason == reason for r in out)
    assert all(r.message for r in out)


def test_truncated_roi_and_garbage_adc(bins: Path, tmp_path: Path):
    src = bins / "smhi/bins"
    stem = "D20220519T124533_IFCB134"
    for suffix in (".hdr", ".adc"):
        shutil.copy(src / f"{stem}{suffix}", tmp_path / f"{stem}{suffix}")
    data = (src / f"{stem}.roi").read_bytes()
    (tmp_path / f"{stem}.roi").write_bytes(data[:-100])  # the last ROI loses 100 bytes
    out = list(read_ifcb(tmp_path))
    assert [r.reason for r in out if isinstance(r, Rejection)] == ["truncated"]
    assert out[-1].origin == f"{stem}_00018" and "past the end" in out[-1].message
    assert sum(isinstance(r, Record) for r in out) == 16

    garbage = tmp_path / "g"
    garbage.mkdir()
    (garbage / "D20200101T000000_IFCB001.hdr").write_text("sampleType: Normal\n")
    (garbage / "D20200101T000000_IFCB001.adc").write_bytes(b"\x00\xffnot,an,adc\n" * 3)
    (garbage / "D20200101T000000_IFCB001.roi").write_bytes(b"\x00" * 10)
    (out,) = read_ifcb(garbage)
    assert out.reason == "invalid_bin" and "not" in out.message


def test_paths_forms(bins: Path, tmp_path: Path):
    d = bins / "smhi/bins"
    stem = d / "D20220519T124533_IFCB134"
    assert len(list(read_ifcb(stem))) == 17  # stem without suffix
    assert len(list(read_ifcb([str(stem) + ".roi"]))) == 17
    (missing,) = read_ifcb(tmp_path / "nothing_here")
    assert missing.reason == "missing_file"
    # decoy.adc inside a data tree is not a bin: ignored there
    assert not [r for r in read_ifcb(bins / "pyifcb/data/2012") if "decoy" in r.origin]


def test_manual_mat_labels_attach_to_the_right_rois(bins: Path):
    from scipy.io import loadmat

    irfcb = bins / "irfcb"
    m = loadmat(str(irfcb / "manual/D20220522T003051_IFCB134.mat"))
    class2use = [str(c[0]) for c in m["class2use_manual"].ravel()]
    expected = {}
    for roi, manual, _auto in m["classlist"]:
        if not math.isnan(manual) and class2use[int(manual) - 1] != "unclassified":
            expected[f"D20220522T003051_IFCB134_{int(roi):05d}"] = class2use[int(manual) - 1]
    assert expected == {
        "D20220522T003051_IFCB134_00002": "Mesodinium_rubrum",
        "D20220522T003051_IFCB134_00003": "Mesodinium_rubrum",
    }

    out = {r.origin: r for r in read_ifcb(irfcb / "data", labels=irfcb / "manual")}
    for pid, label in expected.items():
        assert out[pid].raw_label == label
        assert out[pid].extra["label_source"] == "manual_mat"
    # the other manual file (a bin not present): all 184 rows, indices into class2use
    labels = read_ifcb_labels([irfcb / "manual", irfcb / "config/class2use.mat"])
    m2 = loadmat(str(irfcb / "manual/D20220712T210855_IFCB134.mat"))
    for roi, manual, _auto in m2["classlist"][::17]:
        got, extra = labels[f"D20220712T210855_IFCB134_{int(roi):05d}"]
        if math.isnan(manual):
            assert got is None
        else:
            name = class2use[int(manual) - 1]
            assert got == (None if name == "unclassified" else name)
            assert extra["manual_class_index"] == int(manual)


def test_class2use_from_config_when_the_mat_has_none(bins: Path, tmp_path: Path):
    from scipy.io import loadmat, savemat

    irfcb = bins / "irfcb"
    m = loadmat(str(irfcb / "manual/D20220522T003051_IFCB134.mat"))
    savemat(str(tmp_path / "D20220522T003051_IFCB134.mat"), {"classlist": m["classlist"]})
    with pytest.raises(ValueError, match="class2use"):
        read_ifcb(irfcb / "data", labels=tmp_path)
    labels = read_ifcb_labels([tmp_path, irfcb / "config/class2use.mat"])
    assert labels["D20220522T003051_IFCB134_00003"][0] == "Mesodinium_rubrum"


def test_class_folder_labels(bins: Path):
    folder = bins / "smhi/training_data"
    labels = read_ifcb_labels(folder)
    assert len(labels) == len(list(folder.glob("*/*.png"))) == 30
    assert labels["D20230312T005709_IFCB134_00149"][0] == "Mesodinium_major"
    assert labels["D20220520T074607_IFCB134_00004"][0] == "Strombidium-like"
    # a pid-named image in a class folder labels the matching ROI of a bin
    out = {r.origin: r for r in read_ifcb(bins / "irfcb/data", labels=bins / "irfcb/png2")}
    assert out["D20220522T003051_IFCB134_00003"].raw_label == "Mesodinium_rubrum"
    assert out["D20220522T003051_IFCB134_00003"].extra["label_source"] == "image_folder"
    assert out["D20220522T003051_IFCB134_00002"].raw_label is None


def test_header_metadata(bins: Path):
    rec = next(iter(read_ifcb(bins / "irfcb/data/D20220522T003051_IFCB134")))
    assert rec.extra["sample_type"] == "Normal"
    assert rec.extra["adc_layout"] == "ADCFileFormat"
    assert {"trigger", "adc_time", "roi_x", "roi_y", "pmt_a", "peak_a"} <= rec.extra.keys()
    old = next(iter(read_ifcb(bins / "pyifcb/data/2012")))
    assert old.extra["adc_layout"] == "old" and old.extra["roi_x"] == 202


def test_gps_position_from_header(bins: Path, tmp_path: Path):
    src = bins / "smhi/bins"
    stem = "D20220519T124533_IFCB134"
    for suffix in (".adc", ".roi"):
        shutil.copy(src / f"{stem}{suffix}", tmp_path / f"{stem}{suffix}")
    hdr = (src / f"{stem}.hdr").read_text()
    (tmp_path / f"{stem}.hdr").write_text(hdr + "gpsLatitude: 58.25983722\ngpsLongitude: 11.43\n")
    rec = next(iter(read_ifcb(tmp_path)))
    assert (rec.lat, rec.lon) == (58.25983722, 11.43)


def test_store_end_to_end(bins: Path, tmp_path: Path):
    from planktonzilla.store import ObjectStore

    store = ObjectStore(tmp_path / "store")
    labels = [bins / "irfcb/manual", bins / "irfcb/config/class2use.mat"]
    report = store.ingest(read_ifcb(bins, labels=labels), source="ifcb")
    assert (report.read, report.stored, report.rejected) == (51, 44, 7) and report.ok
    rows = store.query(
        "select origin, raw_label, sample_id, instrument, image_format, channels, width, "
        "height, time_utc from objects order by origin"
    ).to_pylist()
    assert len(rows) == 44
    assert {r["instrument"] for r in rows} == {"IFCB"}
    assert {(r["image_format"], r["channels"]) for r in rows} == {("png", 1)}
    labelled = {r["origin"]: r["raw_label"] for r in rows if r["raw_label"]}
    assert labelled == {
        "D20220522T003051_IFCB134_00002": "Mesodinium_rubrum",
        "D20220522T003051_IFCB134_00003": "Mesodinium_rubrum",
    }
    old = next(r for r in rows if r["origin"] == "IFCB5_2012_028_081515_00001")
    assert (old["width"], old["height"]) == (96, 45)
    counts = store.query("select reason, count(*) as n from rejected group by 1").to_pylist()
    reasons = {r["reason"]: r["n"] for r in counts}
    assert reasons == {"empty_bin": 2, "partial_bin": 2, "invalid_bin": 2, "duplicate_bin": 1}
    again = store.ingest(read_ifcb(bins, labels=labels), source="ifcb")
    assert (again.read, again.skipped) == (0, 51)


def test_cli_end_to_end(bins: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from planktonzilla.cli import app
    from planktonzilla.store import ObjectStore

    store = tmp_path / "store"
    args = ["ingest", "ifcb", str(bins / "pyifcb"), str(bins / "smhi/bins")]
    result = CliRunner().invoke(app, [*args, "--store", str(store), "--source", "pyifcb"])
    assert result.exit_code == 0, result.output
    n = ObjectStore(store).query("select count(*) as n from objects").column("n")[0].as_py()
    assert n == 6 + 19 + 17
    rejected = ObjectStore(store).query("select origin, reason from rejected").to_pylist()
    assert len(rejected) == 5  # 2 empty, 2 invalid (invalid/, data/skip/), 1 duplicate partial

    bad = CliRunner().invoke(
        app,
        ["ingest", "ifcb", str(bins / "smhi/bins"), "--labels", str(bins / "irfcb/LICENSE")]
        + ["--store", str(store), "--source", "x"],
    )
    assert bad.exit_code != 0
