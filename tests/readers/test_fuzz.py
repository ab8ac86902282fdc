"""Property-based tests of the parsers that read untrusted text: whatever the EcoTaxa TSV or
the IFCB ADC file holds, no exception escapes and no row is lost (every object row ends as
exactly one Record or Rejection). Time linearity is a benchmark's claim, not a unit test's."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planktonzilla.readers.ecotaxa import read_ecotaxa
from planktonzilla.readers.ifcb import read_ifcb
from planktonzilla.records import Record, Rejection

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Cell text: anything but a line break (a line is a row), quotes and tabs very much included.
_CELL = st.text(
    alphabet=st.one_of(
        st.sampled_from("\"\t \\'[]<>;,.-0123456789eEnaN"),
        st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)),
    ),
    max_size=12,
)


@SETTINGS
@given(
    cells=st.lists(st.tuples(_CELL, _CELL, _CELL), min_size=1, max_size=25),
    typed=st.booleans(),
)
def test_ecotaxa_tsv_every_row_accounted(tmp_path_factory, cells, typed):
    """EcoTaxa's import format (https://ecotaxa.obs-vlfr.fr/gui/help/import): a header row, an
    optional `[t]`/`[f]` type row, one tab-separated row per object."""
    folder = tmp_path_factory.mktemp("tsv")
    lines = ["object_id\tobject_annotation_category\tobject_comment\tobject_length"]
    if typed:
        lines.append("[t]\t[t]\t[t]\t[f]")
    ids = [f"o{i}" for i in range(len(cells))]
    for oid, (label, comment, length) in zip(ids, cells, strict=True):
        lines.append(f"{oid}\t{label}\t{comment}\t{length}")
    (folder / "ecotaxa_fuzz.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    out = list(read_ecotaxa(folder, missing_images="metadata"))

    assert all(isinstance(item, Record | Rejection) for item in out)
    whole_file = len(out) == 1 and isinstance(out[0], Rejection) and out[0].origin.endswith(".tsv")
    if whole_file:  # the file refused as a whole (e.g. no object rows), with its reason
        assert out[0].reason in ("empty", "bad_header")
        return
    assert len(out) == len(ids), [(type(i).__name__, i.origin) for i in out]
    assert len({i.origin for i in out}) == len(out)
    stored = [i.source_object_id for i in out if isinstance(i, Record)]
    assert set(stored) <= set(ids)


# The bin and its ADC layout: a real SMHI bin from ../shared/data (ADCFileFormat in its header:
# RoiWidth, RoiHeight, StartByte are columns 15, 16, 17).
_BIN = "D20220519T124533_IFCB134"
_W, _H, _START = 15, 16, 17
_NUMBER = st.one_of(
    st.integers(-5, 40).map(str),
    st.sampled_from(["inf", "-inf", "1e400", "nan", "", "x", "3.7", "-0", "1e2"]),
)


def _declared(value: str) -> int | None:
    """The ROI size an ADC cell declares, read independently of the reader (None: unreadable)."""
    try:
        x = float(value)
    except ValueError:
        return None
    return int(x) if math.isfinite(x) else None


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(_NUMBER, _NUMBER, st.integers(0, 300_000).map(str)), min_size=1, max_size=20
    )
)
def test_ifcb_adc_every_roi_accounted(shared_data, tmp_path_factory, rows):
    src = shared_data / "ifcb_bins" / "smhi" / "bins"
    folder: Path = tmp_path_factory.mktemp("bin")
    for suffix in (".hdr", ".roi"):
        shutil.copy(src / f"{_BIN}{suffix}", folder / f"{_BIN}{suffix}")
    lines = []
    for n, (w, h, start) in enumerate(rows, start=1):
        fields = ["0"] * 20
        fields[0], fields[_W], fields[_H], fields[_START] = str(n), w, h, start
        lines.append(",".join(fields))
    (folder / f"{_BIN}.adc").write_text("\n".join(lines) + "\n")

    out = list(read_ifcb(folder))

    assert out and all(isinstance(item, Record | Rejection) for item in out)
    if any(isinstance(i, Rejection) and i.origin == _BIN for i in out):
        assert len(out) == 1 or all(isinstance(i, Rejection) for i in out)
        return  # the bin refused as a whole, with its reason
    origins = [i.origin for i in out]
    assert len(set(origins)) == len(origins)
    for n, (w, h, _) in enumerate(rows, start=1):
        dw, dh = _declared(w), _declared(h)
        if dw is None or dh is None or (dw and dh):  # an image, a wrong row or a cut line
            if dw == 0 or dh == 0:
                continue
            assert f"{_BIN}_{n:05d}" in origins, (n, w, h, origins)
