"""A small SYNTHETIC plankton sample, drawn procedurally, so that everything runs on a fresh
machine without a download. These are not real plankton images: they are cartoons with the
gross morphology of common classes (copepod-like, diatom chains, chaetognath-like…) as four
made-up "instruments" would render them, each with its own label vocabulary, looks and
metadata, so that harmonization, training and cross-instrument evaluation have something to
chew on. Never publish results on them.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from planktonzilla.records import Record

LICENSE = "CC0-1.0"
LICENSE_URL = "https://creativecommons.org/publicdomain/zero/1.0/"

Draw = Callable[[ImageDraw.ImageDraw, random.Random, float, int], None]


# Each drawing works on a 128x128 canvas centred on (64, 64); `s` scales, `ink` is the colour.
def _copepod(d, r, s, ink):
    body = [
        (64 - 14 * s, 40 - 4 * s),
        (64 + 14 * s, 40 - 4 * s),
        (64 + 6 * s, 84),
        (64 - 6 * s, 84),
    ]
    d.polygon(body, fill=ink)
    d.ellipse([64 - 15 * s, 28, 64 + 15 * s, 56], fill=ink)
    for side in (-1, 1):  # long first antennae
        d.line([(64 + side * 10 * s, 34), (64 + side * 55 * s, 30 + r.uniform(-8, 8))], ink, 2)
    d.line([(64, 84), (64 + r.uniform(-4, 4), 112)], ink, 2)  # urosome
    for dy in (108, 112):
        d.line([(64, dy), (64 + r.choice((-6, 6)), dy + 6)], ink, 1)


def _diatom_chain(d, r, s, ink):
    n = r.randint(3, 6)
    w = 16 * s
    x0 = 64 - n * w / 2
    for i in range(n):
        x = x0 + i * w
        d.rectangle([x + 1, 56, x + w - 1, 72], outline=ink, width=2)
        d.line([(x + w / 2, 56), (x + w / 2 + r.uniform(-10, 10), 56 - 22 * s)], ink, 1)
        d.line([(x + w / 2, 72), (x + w / 2 + r.uniform(-10, 10), 72 + 22 * s)], ink, 1)


def _chaetognath(d, r, s, ink):
    d.ellipse([64 - 5 * s, 10, 64 + 5 * s, 118], fill=ink)
    d.polygon([(64, 90), (64 - 14 * s, 112), (64 + 14 * s, 112)], fill=ink)  # tail fin
    for y in (60, 80):  # lateral fins
        d.line([(64 - 11 * s, y), (64 + 11 * s, y + 8)], ink, 2)
    for side in (-1, 1):  # grasping spines
        d.line([(64, 14), (64 + side * 10 * s, 4)], ink, 1)


def _radiolarian(d, r, s, ink):
    rad = 20 * s
    d.ellipse([64 - rad, 64 - rad, 64 + rad, 64 + rad], outline=ink, width=3)
    d.ellipse([64 - rad / 2, 64 - rad / 2, 64 + rad / 2, 64 + rad / 2], fill=ink)
    for k in range(r.randint(10, 20)):
        a = 2 * math.pi * k / 16 + r.uniform(0, 0.2)
        d.line(
            [
                (64 + rad * math.cos(a), 64 + rad * math.sin(a)),
                (64 + 2.6 * rad * math.cos(a), 64 + 2.6 * rad * math.sin(a)),
            ],
            ink,
            1,
        )


def _dinoflagellate(d, r, s, ink):  # Tripos-like: body with three horns
    d.ellipse([64 - 12 * s, 54 - 12 * s, 64 + 12 * s, 54 + 12 * s], fill=ink)
    d.line([(64, 50), (64 + r.uniform(-4, 4), 8)], ink, 3)
    d.line([(58, 62), (40 + r.uniform(-6, 6), 110)], ink, 3)
    d.line([(70, 62), (88 + r.uniform(-6, 6), 106)], ink, 3)


def _appendicularian(d, r, s, ink):
    d.ellipse([30, 50, 30 + 22 * s, 50 + 16 * s], fill=ink)
    pts = [(30 + 20 * s + t * 6, 58 + 10 * math.sin(t / 1.5 + r.uniform(0, 1))) for t in range(13)]
    d.line(pts, ink, 3)


def _medusa(d, r, s, ink):
    d.chord([64 - 26 * s, 30, 64 + 26 * s, 30 + 44 * s], 180, 360, fill=ink)
    for k in range(r.randint(5, 9)):
        x = 64 - 24 * s + k * 6 * s
        d.line([(x, 52), (x + r.uniform(-6, 6), 52 + r.uniform(30, 55))], ink, 1)


def _ciliate(d, r, s, ink):
    d.ellipse([64 - 14 * s, 64 - 20 * s, 64 + 14 * s, 64 + 20 * s], outline=ink, width=3)
    for k in range(24):
        a = 2 * math.pi * k / 24
        x, y = 64 + 14 * s * math.cos(a), 64 + 20 * s * math.sin(a)
        d.line([(x, y), (x + 5 * math.cos(a), y + 5 * math.sin(a))], ink, 1)


def _detritus(d, r, s, ink):
    pts = [
        (64 + r.uniform(10, 30) * s * math.cos(a), 64 + r.uniform(10, 30) * s * math.sin(a))
        for a in sorted(r.uniform(0, 2 * math.pi) for _ in range(9))
    ]
    d.polygon(pts, fill=ink)
    for _ in range(6):
        x, y = r.uniform(30, 98), r.uniform(30, 98)
        d.ellipse([x, y, x + 4, y + 4], fill=ink)


def _fecal_pellet(d, r, s, ink):
    d.rounded_rectangle([64 - 8 * s, 20, 64 + 8 * s, 108], radius=int(8 * s), fill=ink)


def _bubble(d, r, s, ink):
    rad = 18 * s
    d.ellipse([64 - rad, 64 - rad, 64 + rad, 64 + rad], outline=ink, width=4)
    d.ellipse([58, 52, 64, 58], fill=ink)


def _fiber(d, r, s, ink):
    pts = [(10 + t * 9, 64 + 20 * math.sin(t / 3 + r.uniform(0, 3))) for t in range(13)]
    d.line(pts, ink, 2)


#: concept -> (drawing, raw label as each instrument's team names it)
CLASSES: dict[str, tuple[Draw, dict[str, str]]] = {
    "copepod": (
        _copepod,
        {
            "ISIIS": "copepod_calanoid",
            "IFCB": "Copepoda",
            "FlowCam": "Copepoda",
            "ZooScan": "Calanoida",
        },
    ),
    "diatom_chain": (
        _diatom_chain,
        {
            "ISIIS": "diatom_chain_string",
            "IFCB": "Chaetoceros",
            "FlowCam": "Chaetoceros",
            "ZooScan": "Bacillariophyceae",
        },
    ),
    "chaetognath": (
        _chaetognath,
        {
            "ISIIS": "chaetognath_sagitta",
            "IFCB": "Chaetognatha",
            "FlowCam": "Chaetognatha",
            "ZooScan": "Chaetognatha",
        },
    ),
    "radiolarian": (
        _radiolarian,
        {
            "ISIIS": "radiolarian_colony",
            "IFCB": "Radiozoa",
            "FlowCam": "Acantharia",
            "ZooScan": "Radiozoa",
        },
    ),
    "dinoflagellate": (
        _dinoflagellate,
        {
            "ISIIS": "protist_dark_center",
            "IFCB": "Tripos",
            "FlowCam": "Tripos",
            "ZooScan": "Dinophyceae",
        },
    ),
    "appendicularian": (
        _appendicularian,
        {
            "ISIIS": "appendicularian_s_shape",
            "IFCB": "Appendicularia",
            "FlowCam": "Appendicularia",
            "ZooScan": "Oikopleuridae",
        },
    ),
    "medusa": (
        _medusa,
        {
            "ISIIS": "hydromedusae_solmaris",
            "IFCB": "Hydrozoa",
            "FlowCam": "Hydrozoa",
            "ZooScan": "Hydrozoa",
        },
    ),
    "ciliate": (
        _ciliate,
        {
            "ISIIS": "protist_other",
            "IFCB": "Ciliophora",
            "FlowCam": "Ciliophora",
            "ZooScan": "Ciliophora",
        },
    ),
    "detritus": (
        _detritus,
        {
            "ISIIS": "detritus_blob",
            "IFCB": "detritus",
            "FlowCam": "Detritus",
            "ZooScan": "detritus",
        },
    ),
    "fecal_pellet": (
        _fecal_pellet,
        {"ISIIS": "fecal_pellet", "IFCB": "fecal pellet", "FlowCam": "feces", "ZooScan": "feces"},
    ),
    "bubble": (
        _bubble,
        {"ISIIS": "artifacts", "IFCB": "bubble", "FlowCam": "bubble", "ZooScan": "bubble"},
    ),
    "fiber": (
        _fiber,
        {"ISIIS": "detritus_filamentous", "IFCB": "fiber", "FlowCam": "fiber", "ZooScan": "fiber"},
    ),
}


@dataclass(frozen=True)
class Instrument:
    name: str
    mode: str  # "L" or "RGB"
    background: tuple[int, ...]
    ink: tuple[int, ...]  # object colour (dark on light for shadowgraphs, etc.)
    image_format: str  # "PNG" or "JPEG"
    size: tuple[int, int]  # output size range in px (objects vary in scale)
    blur: float
    noise: int
    pixel_size_um: float
    site: tuple[float, float]  # lat, lon
    depth: tuple[float, float]
    start: datetime


INSTRUMENTS = {
    "ISIIS": Instrument(
        "ISIIS",
        "L",
        (225,),
        (40,),
        "JPEG",
        (40, 110),
        0.8,
        18,
        68.0,
        (25.6, -79.9),
        (0, 120),
        datetime(2014, 6, 3, tzinfo=UTC),
    ),
    "IFCB": Instrument(
        "IFCB",
        "L",
        (60,),
        (200,),
        "PNG",
        (40, 90),
        0.5,
        8,
        0.29,
        (41.3, -70.6),
        (4, 4),
        datetime(2016, 5, 1, tzinfo=UTC),
    ),
    "FlowCam": Instrument(
        "FlowCam",
        "RGB",
        (238, 238, 230),
        (70, 120, 60),
        "PNG",
        (50, 100),
        0.6,
        10,
        1.6,
        (51.4, 2.8),
        (0, 3),
        datetime(2019, 4, 10, tzinfo=UTC),
    ),
    "ZooScan": Instrument(
        "ZooScan",
        "L",
        (250,),
        (90,),
        "JPEG",
        (70, 140),
        1.0,
        6,
        10.6,
        (43.7, 7.3),
        (0, 200),
        datetime(2013, 2, 1, tzinfo=UTC),
    ),
}


def render(concept: str, instrument: str, rng: random.Random) -> Image.Image:
    """One synthetic vignette of `concept` as `instrument` would show it."""
    draw_fn, _ = CLASSES[concept]
    inst = INSTRUMENTS[instrument]
    ink = inst.ink if inst.mode == "RGB" else inst.ink[0]
    if concept in {"detritus", "fecal_pellet", "fiber"} and inst.mode == "RGB":
        ink = (110, 90, 70)  # non-living particles are brown, not green
    canvas = Image.new(
        inst.mode, (128, 128), inst.background if inst.mode == "RGB" else inst.background[0]
    )
    draw_fn(ImageDraw.Draw(canvas), rng, rng.uniform(0.8, 1.2), ink)
    fill = inst.background if inst.mode == "RGB" else inst.background[0]
    canvas = canvas.rotate(rng.uniform(0, 360), resample=Image.BILINEAR, fillcolor=fill)
    canvas = canvas.filter(ImageFilter.GaussianBlur(inst.blur * rng.uniform(0.7, 1.3)))
    side = rng.randint(*inst.size)
    canvas = canvas.resize((side, int(side * rng.uniform(0.8, 1.2))), Image.BILINEAR)
    pixels = np.asarray(canvas, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, inst.noise, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), inst.mode)


def synthetic_records(instrument: str, *, per_class: int = 20, seed: int = 0) -> Iterator[Record]:
    """`per_class` synthetic images of each class as `instrument` renders them, with metadata
    (site, depth, time, sample id). Deterministic for a given seed."""
    inst = INSTRUMENTS[instrument]
    rng = random.Random(f"{seed}:{instrument}")
    n_samples = 4
    for concept, (_, labels) in CLASSES.items():
        for k in range(per_class):
            sample = k % n_samples
            image = render(concept, instrument, rng)
            buf = io.BytesIO()
            image.save(
                buf,
                format=inst.image_format,
                **({"quality": 90} if inst.image_format == "JPEG" else {}),
            )
            object_id = f"{instrument.lower()}_{concept}_{k:04d}"
            suffix = "jpg" if inst.image_format == "JPEG" else "png"
            yield Record(
                origin=f"{labels[instrument]}/{object_id}.{suffix}",
                image=buf.getvalue(),
                source_object_id=object_id,
                raw_label=labels[instrument],
                instrument=f"synthetic {instrument}",
                pixel_size_um=inst.pixel_size_um,
                lat=round(inst.site[0] + rng.uniform(-0.05, 0.05), 5),
                lon=round(inst.site[1] + rng.uniform(-0.05, 0.05), 5),
                depth_min=(d := round(rng.uniform(*inst.depth), 1)),
                depth_max=d,
                time_utc=inst.start + timedelta(days=sample, minutes=k),
                sample_id=f"{instrument.lower()}-sample-{sample}",
                license=LICENSE,
                license_url=LICENSE_URL,
                extra={"synthetic": True, "concept": concept},
            )
