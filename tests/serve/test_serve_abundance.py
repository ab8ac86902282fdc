"""The web app's abundance view of a store: real IFCB bins, their header volumes, a real
server on loopback."""

import httpx
import pytest

from planktonzilla.ecology.volumes import read_samples, write_samples
from planktonzilla.readers.ifcb import read_ifcb
from planktonzilla.serve import create_app
from planktonzilla.store import ObjectStore
from pz_testing import SHARED_DATA, running

BINS = SHARED_DATA / "ifcb_bins" / "smhi" / "bins"


@pytest.fixture(scope="module")
def url(tmp_path_factory, tiny_models):
    base = tmp_path_factory.mktemp("serve-abundance")
    store = ObjectStore(base / "store")
    assert store.ingest(read_ifcb([BINS]), source="smhi").ok
    rows, _ = read_samples(BINS)
    write_samples(store, "smhi", rows)
    with running(create_app(tiny_models["supervised"], store=store.path)) as url:
        yield url


def test_abundance_json_plot_and_page(url):
    data = httpx.get(f"{url}/api/abundance", params={"unit": "ml"}, timeout=30).json()
    (row,) = [r for r in data["rows"] if r["rank"] == "total"]
    volume = 0.25 * (1003.4138888888889 - 1.4629383680555557) / 60  # the bin's header
    assert row["volume_ml"] == pytest.approx(volume)
    assert row["concentration"] == pytest.approx(row["count"] / volume)
    assert row["lower"] < row["concentration"] < row["upper"]
    png = httpx.get(f"{url}{data['plot']}", timeout=30)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    bad = httpx.get(f"{url}/api/abundance", params={"rank": "tribe"}, timeout=30)
    assert bad.status_code == 400
    page = httpx.get(url, timeout=30).text
    assert 'id="abundance-table"' in page
