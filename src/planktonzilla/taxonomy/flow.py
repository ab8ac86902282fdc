"""A self-contained HTML page (inline SVG + JS, no CDN) showing how the raw labels of each
source flow into the harmonized taxonomy: a Sankey from raw label (or source) → the name at a
chosen rank → root class, weighted by image counts when a store is given, else by labels."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping

from planktonzilla.taxonomy.lineage import RANKS


def flow_data(rows: Iterable[dict], counts: Mapping[tuple[str, str], int] | None = None) -> list:
    """Compact records for the page: [source, raw_label, [7 ranks], root_class, status, n]."""
    out = []
    for r in rows:
        n = 1 if counts is None else int(counts.get((r["source"], r["raw_label"]), 0))
        if counts is not None and n == 0:
            continue
        ranks = [r.get(rank) or "" for rank in RANKS]
        out.append([r["source"], r["raw_label"], ranks, r.get("root_class") or "", r["status"], n])
    return out


def flow_html(
    rows: Iterable[dict],
    counts: Mapping[tuple[str, str], int] | None = None,
    *,
    title: str = "planktonzilla: raw labels → harmonized taxonomy",
) -> str:
    """The page as a string."""
    data = flow_data(rows, counts)
    unit = "images" if counts is not None else "labels"
    payload = json.dumps({"rows": data, "ranks": list(RANKS), "unit": unit}, separators=(",", ":"))
    payload = payload.replace("</", "<\\/")
    return _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>__TITLE__</title>
<style>
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 8px}
#controls{margin:8px 0 12px}select{margin-right:12px}
.node rect{stroke:#333;stroke-width:.5}
.link{fill:none;stroke-opacity:.35}.link:hover{stroke-opacity:.75}
text{font-size:11px;pointer-events:none}
#summary{color:#555;margin-bottom:6px}
</style></head><body>
<h1>__TITLE__</h1>
<div id="controls">
 source <select id="source"></select>
 rank <select id="rank"></select>
</div>
<div id="summary"></div>
<svg id="sankey" xmlns="http://www.w3.org/2000/svg"></svg>
<script id="flow-data" type="application/json">__DATA__</script>
<script>
(function(){
"use strict";
var D = JSON.parse(document.getElementById("flow-data").textContent);
var COLORS = {living:"#2a9d8f", detritus:"#a0785a", artefact:"#e9c46a", inert:"#8d99ae",
              unresolved:"#e76f51"};
var srcSel = document.getElementById("source"), rankSel = document.getElementById("rank");
var sources = Array.from(new Set(D.rows.map(function(r){return r[0];}))).sort();
["(all sources)"].concat(sources).forEach(function(s){
  var o = document.createElement("option"); o.textContent = s; srcSel.appendChild(o);});
D.ranks.forEach(function(r){
  var o = document.createElement("option"); o.textContent = r; rankSel.appendChild(o);});
rankSel.value = "class";
function rootOf(r){ return r[4] === "unresolved" ? "unresolved" : (r[3] || "unresolved"); }
function middleOf(r, k){
  if (r[4] === "unresolved") return "unresolved";
  if (r[3] !== "living") return r[3];
  var v = r[2][k];
  if (v) return v;
  var above = "";
  for (var i = 0; i < k; i++) if (r[2][i]) above = r[2][i];
  return above ? above + " (above " + D.ranks[k] + ")" : "living (no taxon)";
}
function draw(){
  var src = srcSel.value, k = D.ranks.indexOf(rankSel.value);
  var rows = D.rows.filter(function(r){ return src === "(all sources)" || r[0] === src; });
  var cols = [new Map(), new Map(), new Map()], links = new Map();
  function add(col, name, n, root){
    var m = cols[col], e = m.get(name);
    if (!e) { e = {name:name, value:0, col:col, root:root}; m.set(name, e); }
    e.value += n;
  }
  function link(a, b, n, root){
    var key = a.col + "\\u0000" + a.name + "\\u0000" + b.name, e = links.get(key);
    if (!e) { e = {a:a, b:b, value:0, root:root}; links.set(key, e); }
    e.value += n;
  }
  rows.forEach(function(r){
    var left = src === "(all sources)" ? r[0] : r[1], root = rootOf(r), mid = middleOf(r, k);
    add(0, left, r[5], root); add(1, mid, r[5], root); add(2, root, r[5], root);
  });
  rows.forEach(function(r){
    var left = src === "(all sources)" ? r[0] : r[1], root = rootOf(r), mid = middleOf(r, k);
    link(cols[0].get(left), cols[1].get(mid), r[5], root);
    link(cols[1].get(mid), cols[2].get(root), r[5], root);
  });
  var total = rows.reduce(function(s, r){ return s + r[5]; }, 0);
  document.getElementById("summary").textContent = rows.length + " labels, " + total + " " +
    D.unit + "; " + cols[1].size + " harmonized " + D.ranks[k] + " values";
  var pad = 4, W = 1100, nmax = Math.max(cols[0].size, cols[1].size, cols[2].size);
  var H = Math.max(500, nmax * 16), nodeW = 12, xs = [220, 620, W - 160];
  var scale = Infinity;
  cols.forEach(function(m){ scale = Math.min(scale, (H - pad * (m.size - 1)) / total); });
  cols.forEach(function(m, c){
    var y = 0;
    Array.from(m.values()).sort(function(a, b){ return b.value - a.value; }).forEach(function(e){
      e.x = xs[c]; e.y = y; e.h = Math.max(1, e.value * scale); e.out = 0; e.in = 0;
      y += e.h + pad; });
  });
  var svg = document.getElementById("sankey"), NS = "http://www.w3.org/2000/svg";
  svg.setAttribute("width", W); svg.setAttribute("height", H + 20);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  function el(tag, attrs, parent){
    var e = document.createElementNS(NS, tag);
    for (var a in attrs) e.setAttribute(a, attrs[a]);
    (parent || svg).appendChild(e); return e;
  }
  Array.from(links.values()).sort(function(p, q){ return p.b.y - q.b.y; }).forEach(function(l){
    var w = Math.max(1, l.value * scale);
    var y0 = l.a.y + l.a.out + w / 2, y1 = l.b.y + l.b.in + w / 2;
    l.a.out += w; l.b.in += w;
    var x0 = l.a.x + nodeW, x1 = l.b.x, mx = (x0 + x1) / 2;
    var p = el("path", {"class":"link", d:"M"+x0+","+y0+"C"+mx+","+y0+" "+mx+","+y1+" "+x1+","+y1,
      stroke: COLORS[l.root] || "#999", "stroke-width": w});
    el("title", {}, p).textContent = l.a.name + " → " + l.b.name + ": " + l.value + " " + D.unit;
  });
  cols.forEach(function(m, c){
    m.forEach(function(e){
      var g = el("g", {"class":"node"});
      el("rect", {x:e.x, y:e.y, width:nodeW, height:e.h,
                  fill: c === 2 ? (COLORS[e.name] || "#999") : (COLORS[e.root] || "#999")}, g);
      el("title", {}, g).textContent = e.name + ": " + e.value + " " + D.unit;
      var t = el("text", {x: c === 0 ? e.x - 4 : e.x + nodeW + 4, y: e.y + e.h / 2 + 4,
                          "text-anchor": c === 0 ? "end" : "start"}, g);
      t.textContent = e.name;
    });
  });
}
srcSel.addEventListener("change", draw); rankSel.addEventListener("change", draw);
draw();
})();
</script></body></html>
"""
