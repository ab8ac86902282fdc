// planktonzilla web page: upload images / zips to /api/predict, show a gallery and a table,
// and browse the store (/api/stats). Plain DOM code: every text goes through textContent, so
// file names and labels can never inject markup.
"use strict";

const RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"];
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

const percent = (p) => (p === null || p === undefined ? "—" : `${(100 * p).toFixed(1)} %`);
const count = (n) => Number(n).toLocaleString("en");
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ---------------------------------------------------------------- model
async function loadModel() {
  try {
    const response = await fetch("/api/model");
    const model = await response.json();
    $("model-info").textContent =
      `${model.kind} model · ${model.classes.length} classes · ${model.image_size} px`;
  } catch (err) {
    $("model-info").textContent = "model information unavailable";
  }
}

// ---------------------------------------------------------------- uploads
async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const topK = $("top-k").value;
  setStatus(`Classifying ${files.length} file${files.length > 1 ? "s" : ""}…`);
  let response;
  let body;
  try {
    response = await fetch(`/api/predict?top_k=${encodeURIComponent(topK)}&thumbnails=true`, {
      method: "POST",
      body: form,
    });
    body = await response.json();
  } catch (err) {
    setStatus(`The upload failed: ${err}`, true);
    return;
  }
  if (!response.ok) {
    const error = body.error || { code: "error", message: response.statusText };
    setStatus(`Refused (${response.status} ${error.code}): ${error.message}`, true);
    renderErrors(body.errors || [error]);
    $("results").hidden = false;
    $("gallery").replaceChildren();
    document.querySelector("#results-table tbody").replaceChildren();
    $("download-csv").hidden = true;
    $("download-ecotaxa").hidden = true;
    $("summary").textContent = "";
    return;
  }
  renderResults(body);
  const bad = body.errors.length ? `, ${body.errors.length} refused` : "";
  setStatus(`${body.count} image${body.count === 1 ? "" : "s"} classified${bad} in ${body.seconds} s.`);
}

function renderErrors(errors) {
  const list = $("errors");
  list.replaceChildren(
    ...errors.map((e) =>
      el("li", {}, el("code", { text: e.file || "request" }), ` — ${e.code}: ${e.message}`),
    ),
  );
}

function lineageNode(prediction) {
  const span = el("span", { class: "lineage" });
  const names = RANKS.map((rank) => [rank, prediction.lineage[rank]]).filter(([, n]) => n);
  names.forEach(([rank, name], i) => {
    if (i) span.append(" › ");
    const confident = prediction.confident.rank === rank;
    span.append(el("span", { class: confident ? "confident" : "", title: rank, text: name }));
  });
  if (!names.length) span.textContent = "(no lineage)";
  return span;
}

function barsNode(prediction) {
  const bars = el("div", { class: "bars" });
  for (const { label, probability } of prediction.top) {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(100, 100 * probability))}%`;
    bars.append(
      el(
        "div",
        { class: "bar" },
        el("div", { class: "track" }, fill, el("span", { class: "name", text: label })),
        el("span", { class: "value", text: percent(probability) }),
      ),
    );
  }
  return bars;
}

function confidentText(prediction) {
  const c = prediction.confident;
  if (!c.name) return "abstains (no rank clears its threshold)";
  return c.rank ? `${c.name} (${c.rank}, ${percent(c.probability)})` : `${c.name} (${percent(c.probability)})`;
}

function livingText(p) {
  if (p.living === null || p.living === undefined) return "—";
  return `${p.living ? "living" : "non-living"} (${percent(p.living_probability)})`;
}

function oodText(p) {
  if (p.ood === null || p.ood === undefined) {
    return p.ood_score === null ? "—" : `score ${p.ood_score.toFixed(2)} (uncalibrated)`;
  }
  return `${p.ood ? "yes" : "no"} (score ${p.ood_score.toFixed(2)})`;
}

function thumb(p) {
  return p.thumbnail ? el("img", { src: p.thumbnail, alt: p.file }) : el("span", { text: "—" });
}

function renderResults(body) {
  $("results").hidden = false;
  $("summary").textContent = `${body.count} prediction${body.count === 1 ? "" : "s"} (top ${body.top_k})`;
  const csv = $("download-csv");
  const tsv = $("download-ecotaxa");
  csv.href = body.downloads.csv;
  tsv.href = body.downloads.ecotaxa;
  csv.hidden = false;
  tsv.hidden = false;
  renderErrors(body.errors);

  const gallery = $("gallery");
  gallery.replaceChildren(
    ...body.predictions.map((p) => {
      const tags = el("div", { class: "tags" });
      tags.append(el("span", { class: `tag ${p.living === false ? "nonliving" : ""}`, text: livingText(p) }));
      if (p.ood) tags.append(el("span", { class: "tag ood", text: "out of distribution" }));
      return el(
        "div",
        { class: "card", "data-label": p.label },
        el("div", { class: "thumb" }, thumb(p)),
        el("h4", { text: `${p.label} · ${percent(p.probability)}` }),
        el("div", { class: "file", text: p.file }),
        lineageNode(p),
        barsNode(p),
        el("div", { text: `confident to: ${confidentText(p)}` }),
        tags,
      );
    }),
  );

  const tbody = document.querySelector("#results-table tbody");
  tbody.replaceChildren(
    ...body.predictions.map((p) =>
      el(
        "tr",
        { "data-label": p.label, "data-file": p.file },
        el("td", {}, thumb(p)),
        el("td", { class: "file", text: p.file }),
        el("td", { class: "label", text: p.label }),
        el("td", { class: "num", text: percent(p.probability) }),
        el("td", {}, lineageNode(p)),
        el("td", {}, barsNode(p)),
        el("td", { text: confidentText(p) }),
        el("td", { text: livingText(p) }),
        el("td", { text: oodText(p) }),
      ),
    ),
  );
}

function setupUploads() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    upload(Array.from(input.files));
    input.value = ""; // choosing the same files again re-sends them
  });
  const zone = $("dropzone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    upload(Array.from(event.dataTransfer.files));
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
}

// ---------------------------------------------------------------- store
function fillTable(id, rows, columns) {
  const tbody = document.querySelector(`#${id} tbody`);
  tbody.replaceChildren(
    ...rows.map((row) =>
      el(
        "tr",
        {},
        ...columns.map((c) => {
          const value = row[c];
          const numeric = typeof value === "number";
          return el("td", { class: numeric ? "num" : "", text: value === null ? "" : numeric ? count(value) : value });
        }),
      ),
    ),
  );
}

// The map's extent: the whole world, or the data's neighbourhood when the points are
// clustered (a 2:1 equirectangular box, at least 8 degrees tall).
function mapExtent(locations) {
  if (!locations.length) return { west: -180, south: -90, width: 360, height: 180 };
  const lons = locations.map((l) => l.lon);
  const lats = locations.map((l) => l.lat);
  const [west, east] = [Math.min(...lons), Math.max(...lons)];
  const [south, north] = [Math.min(...lats), Math.max(...lats)];
  let height = Math.max(8, 1.4 * (north - south), 0.7 * (east - west));
  if (height >= 90) return { west: -180, south: -90, width: 360, height: 180 };
  const width = 2 * height;
  const cx = Math.min(180 - width / 2, Math.max(-180 + width / 2, (west + east) / 2));
  const cy = Math.min(90 - height / 2, Math.max(-90 + height / 2, (south + north) / 2));
  return { west: cx - width / 2, south: cy - height / 2, width, height };
}

function gridStep(span) {
  return [1, 2, 5, 10, 15, 30, 60].find((step) => span / step <= 8) || 60;
}

function renderMap(locations) {
  const figure = $("map");
  const box = mapExtent(locations);
  const unit = box.width / 360; // sizes below are in "world degrees", scaled to the view
  const top = -(box.south + box.height); // SVG y grows downwards: y = -latitude
  const map = svg("svg", {
    viewBox: `${box.west} ${top} ${box.width} ${box.height}`,
    role: "img",
    "aria-label": "sampling locations",
  });
  map.append(svg("rect", { class: "ocean", x: box.west, y: top, width: box.width, height: box.height }));
  const step = gridStep(box.height);
  const line = (attrs, cls) => {
    const l = svg("line", { ...attrs, class: cls });
    l.style.strokeWidth = `${0.3 * unit}`;
    map.append(l);
  };
  const label = (x, y, text, anchor) => {
    const t = svg("text", { x, y, class: "grid-label", "text-anchor": anchor });
    t.style.fontSize = `${5 * unit}px`;
    t.textContent = text;
    map.append(t);
  };
  const east = box.west + box.width;
  const north = box.south + box.height;
  for (let lon = Math.ceil(box.west / step) * step; lon <= east; lon += step) {
    line({ x1: lon, y1: top, x2: lon, y2: top + box.height }, "graticule");
    label(lon + unit, top + box.height - 2 * unit, `${lon}°`, "start");
  }
  for (let lat = Math.ceil(box.south / step) * step; lat <= north; lat += step) {
    line({ x1: box.west, y1: -lat, x2: east, y2: -lat }, lat ? "graticule" : "graticule equator");
    label(box.west + unit, -lat - unit, `${lat}°`, "start");
  }
  const most = Math.max(1, ...locations.map((l) => l.objects));
  // big points first: small ones stay visible on top of them
  const sorted = [...locations].sort((a, b) => b.objects - a.objects);
  for (const loc of sorted) {
    const r = unit * (1.5 + 5 * Math.sqrt(loc.objects / most));
    const dot = svg("circle", { cx: loc.lon, cy: -loc.lat, r: r.toFixed(4) });
    dot.style.strokeWidth = `${0.3 * unit}`;
    const title = svg("title");
    title.textContent = `${loc.lat}°, ${loc.lon}°: ${count(loc.objects)} objects`;
    dot.append(title);
    map.append(dot);
  }
  const caption = el("figcaption", {
    text: locations.length
      ? `${locations.length} location${locations.length === 1 ? "" : "s"}, ` +
        "equirectangular (longitude, latitude); point area ∝ objects"
      : "no object in the store has a position",
  });
  figure.replaceChildren(map, caption);
}

function renderSamples(samples) {
  $("samples").replaceChildren(
    ...samples.map((s) =>
      el(
        "div",
        { class: "sample-class" },
        el("span", { class: "name", text: `${s.label} (${count(s.objects)})` }),
        ...s.object_ids.map((id) => el("img", { src: `/api/images/${id}?size=96`, alt: s.label, loading: "lazy" })),
      ),
    ),
  );
}

async function loadStore() {
  let response;
  try {
    response = await fetch("/api/stats");
  } catch (err) {
    return;
  }
  if (!response.ok) return; // no store: the section stays hidden
  const stats = await response.json();
  $("store").hidden = false;
  $("nav-store").hidden = false;
  const t = stats.totals;
  $("store-totals").textContent =
    `${count(t.objects)} objects from ${count(t.sources)} source${t.sources === 1 ? "" : "s"}, ` +
    `${count(t.classes)} classes, ${count(t.located)} with a position.`;
  fillTable("sources-table", stats.sources, ["source", "objects", "raw_labels"]);
  fillTable("instruments-table", stats.instruments, ["instrument", "objects"]);
  fillTable("taxa-table", stats.taxa, ["taxon", "rank", "phylum", "root_class", "objects"]);
  renderMap(stats.locations);
  renderSamples(stats.samples);
  if (stats.report) {
    $("nav-report").hidden = false;
    const link = $("report-link");
    link.replaceChildren("Latest evaluation: ", el("a", { href: stats.report.url, text: stats.report.evaluation }));
    link.hidden = false;
  }
}

// Abundance per sample (/api/abundance): shown once some sample of the store has a volume.
const precise = (x) => (x === null ? "" : Number(x).toPrecision(3));

async function loadAbundance() {
  let response;
  try {
    response = await fetch("/api/abundance?rank=genus&unit=L");
  } catch (err) {
    return;
  }
  if (!response.ok) return;
  const data = await response.json();
  if (!data.rows.some((r) => r.concentration !== null)) return;
  $("abundance").hidden = false;
  $("abundance-plot").src = data.plot;
  document.querySelector("#abundance-table tbody").replaceChildren(
    ...data.rows.map((r) =>
      el(
        "tr",
        {},
        el("td", { text: r.sample_id }),
        el("td", { text: r.subsample_id || "" }),
        el("td", { text: r.taxon }),
        el("td", { text: r.rank }),
        el("td", { class: "num", text: precise(r.count) }),
        el("td", { class: "num", text: precise(r.concentration) }),
        el("td", { class: "num", text: r.lower === null ? "" : `${precise(r.lower)}–${precise(r.upper)}` }),
      ),
    ),
  );
}

document.addEventListener("DOMContentLoaded", () => {
  setupUploads();
  loadModel();
  loadStore().then(loadAbundance);
});
