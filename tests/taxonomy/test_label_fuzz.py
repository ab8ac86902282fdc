"""The label parser and resolver on arbitrary text: no exception escapes, every label gets a
resolution, and the work grows linearly with the label's length (counted in Python function
calls, which do not depend on the machine's speed)."""

from __future__ import annotations

import cProfile
import pstats
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planktonzilla.taxonomy import parse_label
from planktonzilla.taxonomy.resolve import resolve_label

# label-like text: the separators and punctuation real vocabularies use, letters, digits,
# and any other unicode now and then
LABELS = st.text(
    alphabet=st.one_of(
        st.sampled_from("abcdefghijklmnopqrstuvwxyz_<>-/,|; .()+'\"ABCXYZ0123456789"),
        st.characters(),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LABELS)
def test_any_text_parses_and_resolves_without_an_exception(label):
    parse_label(label)
    resolution = resolve_label(label)
    assert resolution.status  # resolved, unresolved or ambiguous: always an answer


def _calls(label: str) -> int:
    profile = cProfile.Profile()
    profile.runcall(resolve_label, label)
    return pstats.Stats(profile).total_calls


@pytest.mark.parametrize(
    "unit",
    ["a", "copepod_", "Calanus finmarchicus > ", "chainlarge", "x-" * 3],
    ids=["one-letter", "vernacular", "path", "glued", "hyphens"],
)
def test_work_is_linear_in_label_length(unit):
    resolve_label(unit * 4)  # load the backbone and index outside the count
    short, long = unit * (2_000 // len(unit)), unit * (16_000 // len(unit))
    # 8x the length: linear work is ~8x the calls; quadratic would be ~64x. The margin (12x)
    # leaves room for fixed costs and per-word caching.
    assert _calls(long) <= 12 * max(_calls(short), 1)


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["a", "copepod_", "chain"], ids=["one-word", "words", "glued"])
def test_a_one_megabyte_label_resolves_in_bounded_time(unit):
    """The old parser tried every cut of a long word (quadratic: a 1 MB label hung an ingest
    under the store's lock). Linear, this takes a few seconds even on a slow CPU; the limit is
    a hang detector, not a speed measurement."""
    code = (
        "from planktonzilla.taxonomy.resolve import resolve_label\n"
        f"print(resolve_label({unit!r} * ({1 << 20} // {len(unit)})).status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("resolved", "unresolved", "ambiguous")
