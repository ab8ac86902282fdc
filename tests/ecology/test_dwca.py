"""The Darwin Core Archive of a real UVP5 profile reads back with python-dwca-reader and passes
the OBIS community's checks (pyobistools: required fields, event ids, extension ids)."""

import shutil
import zipfile

import dwca.read as dwca_read  # python-dwca-reader (the test extra)
import pytest
from pyobistools.validation import check_eventids, check_fields  # the test extra
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.ecology.abundance import abundance
from planktonzilla.ecology.dwca import write_dwca
from planktonzilla.ecology.volumes import read_samples, write_samples
from planktonzilla.exceptions import InputError
from planktonzilla.readers.ecotaxa import read_ecotaxa
from planktonzilla.store import ObjectStore
from pz_testing import SHARED_DATA

DATA = SHARED_DATA
UVP = DATA / "ecotaxa_exports/uvp5_ecopart"
TARA = DATA / "ecotaxa_exports/tara_zooscan/export.tsv"


@pytest.fixture(scope="module")
def uvp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uvp") / "export"
    folder.mkdir()
    for pattern in ("*_bats361_ctd1_*_raw_*", "*metadata_summary*"):
        for f in UVP.glob(pattern):
            shutil.copy(f, folder / f.name)
    store = ObjectStore(folder.parent / "store")
    store.ingest(read_ecotaxa(folder), source="bats", license="CC-BY-4.0")
    rows, _ = read_samples(folder)
    write_samples(store, "bats", rows)
    return store


def test_archive_reads_back_and_passes_obis_checks(uvp, tmp_path):
    table = abundance(uvp, rank="genus", unit="m3")
    path = write_dwca(
        table, tmp_path / "bats.zip", store=uvp, title="BATS UVP5", country_code="BM",
        identified_by="EcoTaxa validators",
    )  # fmt: skip
    present = [r for r in table.to_pylist() if r["count"] > 0 and r["rank"] != "total"]
    units = {r["subsample_id"] for r in table.to_pylist()}
    with dwca_read.DwCAReader(path) as archive:
        assert archive.descriptor.core.type == "http://rs.tdwg.org/dwc/terms/Event"
        assert len(archive.rows) == len(units) + 1  # the depth bins and their profile
        events = archive.pd_read("event.txt")
        occurrences = archive.pd_read("occurrence.txt")
        emof = archive.pd_read("extendedmeasurementorfact.txt")
        assert "eml.xml" in zipfile.ZipFile(path).namelist() and archive.metadata is not None
    assert len(occurrences) == len(present)
    assert set(occurrences["basisOfRecord"]) == {"MachineObservation"}
    known = occurrences["scientificNameID"].notna()
    assert (
        known.any()
        and occurrences.loc[known, "scientificNameID"]
        .str.match(r"urn:lsid:marinespecies\.org:taxname:\d+$")
        .all()
    )
    abundance_rows = emof[emof["measurementTypeID"].notna()]
    assert set(abundance_rows["measurementUnitID"]) == {
        "http://vocab.nerc.ac.uk/collection/P06/current/UPMM/"
    }
    assert len(abundance_rows) == len(present)

    assert check_fields.check_fields(events, analysis_type="event_core").empty
    assert check_eventids.check_eventids(events).empty
    assert check_eventids.check_extension_eventids(events, occurrences).empty
    assert check_eventids.check_extension_eventids(events, emof).empty
    # occurrences: the only finding is a missing WoRMS id, exactly where no AphiaID is known
    found = check_fields.check_fields(occurrences, analysis_type="occurrence_extension")
    assert set(found["field"]) <= {"scientificNameID"}
    assert len(found) == (~known).sum()


def test_missing_country_is_what_obis_reports(uvp, tmp_path):
    path = write_dwca(abundance(uvp, rank="class", unit="L"), tmp_path / "a.zip", store=uvp)
    with dwca_read.DwCAReader(path) as archive:
        events = archive.pd_read("event.txt")
    found = check_fields.check_fields(events, analysis_type="event_core")
    assert set(found["field"]) == {"countryCode"}


def test_mixed_licences_are_refused_unless_asked(tmp_path):
    store = ObjectStore(tmp_path / "store")
    rows = list(read_ecotaxa(TARA, missing_images="metadata"))
    store.ingest(rows[:50], source="tara", license="CC-BY-4.0")
    store.ingest(rows[50:], source="tara_nc", license="CC-BY-NC-4.0")
    table = abundance(store, rank="family", unit="m3")
    with pytest.raises(InputError, match="several licences"):
        write_dwca(table, tmp_path / "x.zip", store=store)
    assert not (tmp_path / "x.zip").exists()
    path = write_dwca(table, tmp_path / "x.zip", store=store, allow_mixed_licenses=True)
    eml = zipfile.ZipFile(path).read("eml.xml").decode()
    assert "CC-BY-NC-4.0" in eml and "Non-commercial" in eml


def test_export_dwca_cli(uvp, tmp_path):
    out = tmp_path / "cli.zip"
    result = CliRunner().invoke(
        app, ["export", "dwca", "--store", str(uvp.path), "--out", str(out), "--country-code",
              "BM", "--title", "BATS"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with dwca_read.DwCAReader(out) as archive:
        assert len(archive.rows) > 1
