"""A Darwin Core Archive of an abundance table, ready for OBIS / GBIF: an Event core (one event
per sampling unit; a sample with acquisitions or depth bins is their parent event), an
Occurrence extension (one occurrence per unit x taxon present) and an extended
Measurement-or-Fact extension (concentrations with their interval, sampled volumes), with
`meta.xml` and an `eml.xml` (title, licence, citation, methods).

    write_dwca(table, "dataset.zip", store=store, title="MVCO IFCB 2022", license="CC-BY-4.0")

Licences: the objects behind the table decide what may be exported. Their per-image licences
are listed in the EML; a table whose images carry more than one licence is refused unless
`allow_mixed_licenses`, and non-commercial (NC) licences are flagged in the EML rights.

Vocabulary (eMoF): OBIS asks for NERC vocabulary IDs (OBIS manual, "Extended
Measurement Or Fact"; the terms live on the NERC Vocabulary Server, vocab.nerc.ac.uk):
P01 `SDBIOL01` "Abundance of biological entity specified elsewhere per unit volume of the
water body", P06 `UCPL` "Number per litre" and `UPMM` "Number per cubic metre". These three
are the IDs of the OBIS manual's plankton examples; they were not re-checked against the vocab
server from this machine (no internet). The sampled volume and the classifier score have no
measurementTypeID here: no NERC term for them was verified, so none is claimed.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

from planktonzilla._version import __version__
from planktonzilla.exceptions import InputError
from planktonzilla.fileio import atomic_writer

__all__ = ["EMOF_TERMS", "license_summary", "write_dwca"]

_P01 = "http://vocab.nerc.ac.uk/collection/P01/current/"
_P06 = "http://vocab.nerc.ac.uk/collection/P06/current/"
ABUNDANCE_TYPE = (
    "Abundance of biological entity specified elsewhere per unit volume of the water body",
    _P01 + "SDBIOL01/",
)
#: Concentration unit of the abundance table -> (measurementUnit, measurementUnitID).
EMOF_TERMS = {
    "L": ("individuals per litre", _P06 + "UCPL/"),
    "m3": ("individuals per cubic metre", _P06 + "UPMM/"),
}
_DWC = "http://rs.tdwg.org/dwc/terms/"
_EVENT = ["eventID", "parentEventID", "eventDate", "decimalLatitude", "decimalLongitude",
          "geodeticDatum", "countryCode", "minimumDepthInMeters", "maximumDepthInMeters",
          "sampleSizeValue", "sampleSizeUnit", "samplingProtocol", "eventRemarks"]  # fmt: skip
_OCCURRENCE = ["eventID", "occurrenceID", "basisOfRecord", "occurrenceStatus", "scientificName",
               "scientificNameID", "taxonRank", "kingdom", "individualCount",
               "organismQuantity", "organismQuantityType", "identifiedBy",
               "identificationRemarks"]  # fmt: skip
_EMOF = ["eventID", "occurrenceID", "measurementID", "measurementType", "measurementTypeID",
         "measurementValue", "measurementUnit", "measurementUnitID", "measurementMethod",
         "measurementRemarks"]  # fmt: skip
_TERM_NS = {
    "measurementID": "http://rs.iobis.org/obis/terms/",
    "measurementTypeID": "http://rs.iobis.org/obis/terms/",
    "measurementUnitID": "http://rs.iobis.org/obis/terms/",
}
_ROW_TYPES = {
    "event.txt": "http://rs.tdwg.org/dwc/terms/Event",
    "occurrence.txt": "http://rs.tdwg.org/dwc/terms/Occurrence",
    "extendedmeasurementorfact.txt": "http://rs.iobis.org/obis/terms/ExtendedMeasurementOrFact",
}


def license_summary(store, sources) -> dict[str | None, int]:
    """Objects per licence (None: not stated) of the given sources."""
    con = store.connect()
    try:
        rows = con.execute(
            "SELECT license, count(*) FROM objects WHERE source IN (SELECT unnest(?)) GROUP BY 1",
            [sorted(sources)],
        ).fetchall()
    finally:
        con.close()
    return {lic: n for lic, n in rows}


def _lsid(aphia) -> str:
    return f"urn:lsid:marinespecies.org:taxname:{int(aphia)}" if aphia is not None else ""


def _num(x) -> str:
    return "" if x is None else f"{x:.6g}"


def _event_id(source, sample, sub=None) -> str:
    return ":".join(str(p) for p in (source, sample, sub) if p)


def write_dwca(
    table,
    path: str | os.PathLike,
    *,
    store=None,
    method: str | None = None,
    title: str = "Plankton abundance from imaging",
    license: str = "CC-BY-4.0",
    citation: str = "",
    creator: str = "",
    country_code: str = "",
    identified_by: str = "",
    allow_mixed_licenses: bool = False,
) -> Path:
    """Write the archive of `table` (planktonzilla.ecology.abundance COLUMNS) to `path` (zip).
    `method` picks the rows of one method (labels, predicted, acc, pacc; default: the first);
    `identified_by` names the person (validated labels) or the model name + version."""
    from planktonzilla.taxonomy import Backbone

    rows = table.to_pylist()
    methods = sorted({r["method"] for r in rows})
    method = method or (methods[0] if methods else None)
    if method not in methods:
        raise InputError(f"no rows of method {method!r} (the table has {', '.join(methods)})")
    rows = [r for r in rows if r["method"] == method and r["rank"] != "total"]
    unit = rows[0]["unit"] if rows else "L"
    if unit not in EMOF_TERMS:
        raise InputError(f"export concentrations per L or m3, not per {unit}")
    licenses = license_summary(store, {r["source"] for r in rows}) if store is not None else {}
    if len(licenses) > 1 and not allow_mixed_licenses:
        listed = ", ".join(f"{k or 'not stated'} ({v:,})" for k, v in licenses.items())
        raise InputError(
            f"the images behind this table carry several licences ({listed}): export one "
            "licence at a time, or pass --allow-mixed-licenses"
        )

    events: dict[str, dict] = {}
    for r in rows:
        parent = _event_id(r["source"], r["sample_id"]) if r["subsample_id"] else ""
        eid = _event_id(r["source"], r["sample_id"], r["subsample_id"])
        when = r["time_utc"]
        base = {
            "eventDate": when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else "",
            "decimalLatitude": _num(r["lat"]),
            "decimalLongitude": _num(r["lon"]),
            "geodeticDatum": "WGS84",
            "countryCode": country_code,
        }
        if parent and parent not in events:
            events[parent] = {"eventID": parent, "parentEventID": "", **base,
                              "samplingProtocol": "", "eventRemarks": "sample"}  # fmt: skip
        events.setdefault(
            eid,
            {
                "eventID": eid,
                "parentEventID": parent,
                **base,
                "minimumDepthInMeters": _num(r["depth_min"]),
                "maximumDepthInMeters": _num(r["depth_max"]),
                "sampleSizeValue": _num(r["volume_ml"]),
                "sampleSizeUnit": "millilitres" if r["volume_ml"] else "",
                "samplingProtocol": f"imaging; volume from {r['volume_method']}",
            },
        )
    backbone = Backbone.load()
    occurrences, emof = [], []
    basis = "MachineObservation"
    for r in rows:
        if not r["count"] or r["count"] <= 0:
            continue
        eid = _event_id(r["source"], r["sample_id"], r["subsample_id"])
        oid = f"{eid}:{r['taxon']}"
        lineage = backbone.lineage(r["taxon"]) if backbone.get(r["taxon"]) else None
        occurrences.append(
            {
                "eventID": eid,
                "occurrenceID": oid,
                "basisOfRecord": basis,
                "occurrenceStatus": "present",
                "scientificName": r["taxon"],
                "scientificNameID": _lsid(r["aphia_id"]),
                "taxonRank": r["rank"],
                "kingdom": (lineage.kingdom if lineage else "") or "",
                "individualCount": str(round(r["count"])),
                "organismQuantity": _num(r["count"]),
                "organismQuantityType": "individuals",
                "identifiedBy": identified_by,
                "identificationRemarks": f"{method} (planktonzilla {__version__})",
            }
        )
        if r["concentration"] is not None:
            name, unit_id = EMOF_TERMS[unit]
            emof.append(
                {
                    "eventID": eid,
                    "occurrenceID": oid,
                    "measurementID": f"{oid}:abundance",
                    "measurementType": ABUNDANCE_TYPE[0],
                    "measurementTypeID": ABUNDANCE_TYPE[1],
                    "measurementValue": _num(r["concentration"]),
                    "measurementUnit": name,
                    "measurementUnitID": unit_id,
                    "measurementMethod": f"count / sampled volume ({method})",
                    "measurementRemarks": f"95% interval {_num(r['lower'])}-{_num(r['upper'])}",
                }
            )
        if r.get("score") is not None:
            emof.append(
                {
                    "eventID": eid,
                    "occurrenceID": oid,
                    "measurementID": f"{oid}:score",
                    "measurementType": "classifier score (mean probability of the predictions)",
                    "measurementValue": _num(r["score"]),
                    "measurementMethod": identified_by or method,
                }
            )
    for eid, e in events.items():
        if e.get("sampleSizeValue"):
            emof.append(
                {
                    "eventID": eid,
                    "occurrenceID": "",
                    "measurementID": f"{eid}:volume",
                    "measurementType": "sampled volume",
                    "measurementValue": e["sampleSizeValue"],
                    "measurementUnit": "millilitres",
                    "measurementMethod": e["samplingProtocol"],
                }  # fmt: skip
            )
    files = {
        "event.txt": _tsv(_EVENT, events.values(), "eventID"),
        "occurrence.txt": _tsv(_OCCURRENCE, occurrences, "eventID"),
        "extendedmeasurementorfact.txt": _tsv(_EMOF, emof, "eventID"),
        "meta.xml": _meta(),
        "eml.xml": _eml(title, license, citation, creator, method, licenses),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _tsv(columns: list[str], rows, core_id: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE,
                        escapechar="\\")  # fmt: skip
    writer.writerow(["id", *columns])
    for row in rows:
        cells = [str(row.get(c, "") or "").replace("\t", " ").replace("\n", " ") for c in columns]
        writer.writerow([row[core_id], *cells])
    return out.getvalue()


def _fields(columns: list[str]) -> str:
    return "\n".join(
        f'    <field index="{i + 1}" term="{_TERM_NS.get(c, _DWC)}{c}"/>'
        for i, c in enumerate(columns)
    )


def _meta() -> str:
    def table(tag, name, columns, key):
        return (
            f'  <{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n"'
            f' fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="{_ROW_TYPES[name]}">\n'
            f"    <files><location>{name}</location></files>\n"
            f'    <{key} index="0"/>\n{_fields(columns)}\n  </{tag}>'
        )

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">\n'
        + table("core", "event.txt", _EVENT, "id")
        + "\n"
        + table("extension", "occurrence.txt", _OCCURRENCE, "coreid")
        + "\n"
        + table("extension", "extendedmeasurementorfact.txt", _EMOF, "coreid")
        + "\n</archive>\n"
    )


def _eml(title, license, citation, creator, method, licenses) -> str:
    nc = sorted(k for k in licenses if k and "NC" in k.upper())
    image_licences = "; ".join(f"{k or 'not stated'}: {v:,} images" for k, v in licenses.items())
    rights = f"This dataset is published under {license}."
    if image_licences:
        rights += f" Licences of the source images: {image_licences}."
    if nc:
        rights += (
            f" Non-commercial image licences ({', '.join(nc)}): those images may not be used"
            " commercially."
        )
    methods = (
        f"Objects imaged and identified ({method}); counts per sampling unit divided by the "
        "volume sampled, read from the instrument's own metadata (IFCB header run and inhibit "
        "time x 0.25 ml/min; FlowCam fluid volume imaged; UVP images x image volume; ZooScan "
        f"sample_tot_vol / acq_sub_part). Built with planktonzilla {__version__}."
    )
    today = datetime.now(UTC).date().isoformat()
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="https://eml.ecoinformatics.org/eml-2.2.0"
    packageId="planktonzilla-{today}" system="planktonzilla">
  <dataset>
    <title>{escape(title)}</title>
    <creator><individualName><surName>{escape(creator or "unknown")}</surName>
      </individualName></creator>
    <pubDate>{today}</pubDate>
    <intellectualRights><para>{escape(rights)}</para></intellectualRights>
    <licensed><licenseName>{escape(license)}</licenseName></licensed>
    <methods><methodStep><description><para>{escape(methods)}</para></description>
      </methodStep></methods>
  </dataset>
  <additionalMetadata><metadata><gbif>
    <citation>{escape(citation or title)}</citation>
  </gbif></metadata></additionalMetadata>
</eml:eml>
"""


def export_dwca(store, out, abundance_table=None, **options) -> Path:
    """`pz export dwca`: the archive of a saved `pz abundance` table (Parquet / CSV), or of the
    store's own labels (per m3) when none is given."""
    if abundance_table is None:
        from planktonzilla.ecology.abundance import abundance

        table = abundance(store, rank="species", unit="m3")
    else:
        from planktonzilla.ecology.abundance import read_table

        table = read_table(abundance_table)
    return write_dwca(table, out, store=store, **options)
