"""`pz taxonomy …` commands (through typer's runner) and the flow page, on the small fixture
backbone; the store path with a real store built from real images."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from planktonzilla.cli.taxonomy import app
from planktonzilla.taxonomy import Backbone
from planktonzilla.taxonomy.flow import flow_html
from planktonzilla.taxonomy.mapping import build_mapping, load_mapping, write_mapping
from test_taxonomy_fixture import write_fixture

runner = CliRunner()

PAIRS = [
    ("planktonset1.0", "copepod_calanoid"),
    ("planktonset1.0", "chaetognath_sagitta"),
    ("planktonset1.0", "detritus_blob"),
    ("planktonset1.0", "chordate_type1"),
    ("zooscan", "Cladocera"),
    ("zooscan", "part<Crustacea"),
]


@pytest.fixture(scope="module")
def bb_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("bb"))


@pytest.fixture(scope="module")
def mapping_csv(bb_dir, tmp_path_factory):
    bb = Backbone.load(bb_dir)
    out = tmp_path_factory.mktemp("map") / "mapping.csv"
    write_mapping(build_mapping(PAIRS, bb), out, backbone_digest=bb.digest)
    return out


def test_resolve_command(bb_dir):
    result = runner.invoke(app, ["resolve", "copepod_calanoid_eggs", "--backbone", str(bb_dir)])
    assert result.exit_code == 0, result.output
    assert "Calanoida" in result.output and "qualifier=egg" in result.output
    assert "caption    animalia arthropoda copepoda calanoida" in result.output
    result = runner.invoke(app, ["resolve", "t001", "--json", "--backbone", str(bb_dir)])
    row = json.loads(result.output)
    assert row["status"] == "unresolved" and row["reason"]


def test_map_command(tmp_path, bb_dir):
    labels = tmp_path / "labels.txt"
    labels.write_text("Calanus finmarchicus\nbubble\nZorglub\n\nbubble\n")
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app, ["map", str(labels), "--source", "mine", "-o", str(out), "--backbone", str(bb_dir)]
    )
    assert result.exit_code == 0, result.output
    rows = list(load_mapping(out).values())
    assert [r["raw_label"] for r in rows] == ["Calanus finmarchicus", "bubble", "Zorglub"]
    assert [r["status"] for r in rows] == ["resolved", "resolved", "unresolved"]


def test_check_command(tmp_path, bb_dir, mapping_csv):
    ok = runner.invoke(app, ["check", "--mapping", str(mapping_csv), "--backbone", str(bb_dir)])
    assert ok.exit_code == 0, ok.output
    assert "0 errors" in ok.output
    broken = tmp_path / "mapping.csv"
    broken.write_text(mapping_csv.read_text().replace(",full_body,", ",sideways,"))
    (tmp_path / "mapping.json").write_text(mapping_csv.with_suffix(".json").read_text())
    bad = runner.invoke(app, ["check", "--mapping", str(broken), "--backbone", str(bb_dir)])
    assert bad.exit_code == 1
    assert "sideways" in bad.output and "checksum" in bad.output


def _svg_free_of_cdn(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script src" not in page and "@import" not in page and "<link" not in page


def test_flow_without_store(tmp_path, mapping_csv):
    out = tmp_path / "flow.html"
    result = runner.invoke(app, ["flow", "--out", str(out), "--mapping", str(mapping_csv)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    _svg_free_of_cdn(page)
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["unit"] == "labels" and len(data["rows"]) == len(PAIRS)
    assert {r[0] for r in data["rows"]} == {"planktonset1.0", "zooscan"}


def test_flow_html_escapes_script_end():
    rows = [{"source": "s", "raw_label": "</script><b>", "status": "unresolved", "root_class": ""}]
    page = flow_html(rows)
    assert page.count("</script>") == 2  # the data block and the code block only


def test_flow_and_review_with_a_store(tmp_path, bb_dir, mapping_csv, shared_data):
    store_mod = pytest.importorskip("planktonzilla.store")
    from planktonzilla.records import Record
    from planktonzilla.taxonomy.mapping import resolve_labels

    store_dir = tmp_path / "store"
    records = []
    for folder in ("copepod_calanoid", "detritus_blob"):
        for path in sorted((shared_data / "isiis_ndsb" / folder).glob("*.jpg"))[:3]:
            records.append(Record(origin=path.name, image=path.read_bytes(), raw_label=folder))
    store = store_mod.ObjectStore(store_dir)
    store.ingest(records, source="planktonset1.0")
    other = next((shared_data / "isiis_ndsb" / "amphipods").glob("*.jpg")).read_bytes()
    store.ingest([Record(origin="a.jpg", image=other, raw_label="Zorglub_sp")], source="mine")
    import pyarrow.parquet as pq

    # resolve "mine" against the small fixture backbone instead of the shipped one
    table = resolve_labels("mine", ["Zorglub_sp", "Calanus"], backbone=Backbone.load(bb_dir))
    pq.write_table(table, store_dir / "taxonomy" / "mine.parquet")

    out = tmp_path / "flow.html"
    args = ["flow", "--out", str(out), "--store", str(store_dir), "--mapping", str(mapping_csv)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    _svg_free_of_cdn(page)
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    counts = {(r[0], r[1]): r[5] for r in data["rows"]}
    assert data["unit"] == "images"
    assert counts[("planktonset1.0", "copepod_calanoid")] == 3
    assert counts[("planktonset1.0", "detritus_blob")] == 3

    review = runner.invoke(app, ["review", "--store", str(store_dir), "--backbone", str(bb_dir)])
    assert review.exit_code == 0, review.output
    assert "Zorglub_sp" in review.output and "Calanus" not in review.output.split("Zorglub")[0]


_DOM_STUB = """
function El(tag){this.tag=tag;this.children=[];this.attrs={};this.textContent="";this.value="";
  this.listeners={};}
El.prototype.appendChild=function(c){this.children.push(c);
  if(this.tag==="select"&&!this.value)this.value=c.textContent;return c;};
El.prototype.removeChild=function(c){this.children.splice(this.children.indexOf(c),1);};
Object.defineProperty(El.prototype,"firstChild",{get:function(){return this.children[0]||null;}});
El.prototype.setAttribute=function(k,v){this.attrs[k]=v;};
El.prototype.addEventListener=function(e,f){this.listeners[e]=f;};
var els={"flow-data":new El("script"),"source":new El("select"),"rank":new El("select"),
  "summary":new El("div"),"sankey":new El("svg")};
els["flow-data"].textContent=DATA;
var document={getElementById:function(id){return els[id];},
  createElement:function(t){return new El(t);},createElementNS:function(ns,t){return new El(t);}};
"""


def test_flow_page_script_runs(tmp_path, mapping_csv):
    """The page's own script draws the Sankey (run under node with a minimal DOM)."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    page = flow_html(load_mapping(mapping_csv).values())
    data = re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1)
    code = re.findall(r"<script>(.*?)</script>", page, re.S)[-1]
    script = tmp_path / "flow.js"
    script.write_text(
        f"var DATA={json.dumps(data)};\n{_DOM_STUB}\n{code}\n"
        "console.log(els.summary.textContent, els.sankey.children.length);\n"
        'els.source.value="zooscan"; els.source.listeners.change();\n'
        "console.log(els.summary.textContent, els.sankey.children.length);\n"
    )
    out = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith(f"{len(PAIRS)} labels") and int(first.split()[-1]) > 0
    assert second.startswith("2 labels")
