"""A hostile-input corpus, built at test time: every input ends as a stored object, a
rejection with its reason, or a one-line error, within bounded memory and time.

The corpus is ingested (and read as prediction inputs) by one child process, which reports
its own peak memory (VmHWM of /proc/self/status: `ru_maxrss` would include the parent's,
carried over fork and exec); the bound, 500 MB, is about twice
what the interpreter, pyarrow and DuckDB take at rest and far below what the unbounded reads
took (a 300 MB member, /dev/zero). Wall time per case is bounded at 20 s (a hang is the
failure looked for, not speed: every case finishes in well under a second)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pz_testing import REPO

MAX_RSS_MB = 500
MAX_CASE_S = 20

# Runs in the child: ingest each case into its own store, then read it as prediction input.
_DRIVER = r"""
import json, sys, time

def peak_kib():
    # VmHWM: this process image's own peak (ru_maxrss would carry the forking parent's over exec)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
from planktonzilla.exceptions import PlanktonzillaError
from planktonzilla.images import MAX_BYTES, examine
from planktonzilla.readers.detect import read_inputs
from planktonzilla.records import Record
from planktonzilla.sources.extract import extract
from planktonzilla.store import ObjectStore

root = sys.argv[1]
for case, path in json.loads(sys.argv[2]):
    t = time.monotonic()
    path = f"{root}/{case}/{path}"
    out = {"case": case}
    try:
        if case.startswith("extract_"):
            extract(path, f"{root}/{case}/out")
        else:
            r = ObjectStore(f"{root}/stores/{case}").ingest(
                read_inputs(path, ingest=True), source="s")
            out.update(read=r.read, stored=r.stored, rejected=r.rejected, reasons=dict(r.reasons))
            predicted = []
            for item in read_inputs(path):
                if isinstance(item, Record) and item.image is not None:
                    data, reason, _ = examine(item.image, item.origin, MAX_BYTES, 64_000_000)
                    predicted.append("image" if data is not None else reason)
                else:
                    predicted.append(getattr(item, "reason", "metadata"))
            out["predict"] = predicted
    except PlanktonzillaError as exc:
        out["error"] = str(exc)
    out["seconds"] = time.monotonic() - t
    out["peak_kib"] = peak_kib()  # so far
    print(json.dumps(out), flush=True)
print(json.dumps({"peak_kib": peak_kib()}))
"""


def _png(value: int = 0, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    """`n` zero bytes, streamed (tarfile reads its members from a file object)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        k = min(len(buf), self.left)
        buf[:k] = bytes(k)
        self.left -= k
        return k


def _zeros_member(zf: zipfile.ZipFile, name: str, n: int) -> None:
    with zf.open(name, "w", force_zip64=True) as fh:
        block = b"\0" * (1 << 20)
        for _ in range(n >> 20):
            fh.write(block)


# EcoTaxa's import format (https://ecotaxa.obs-vlfr.fr/gui/help/import): header, type row,
# one tab-separated row per object, images beside the table named by img_file_name.
_TSV_HEAD = (
    "object_id\timg_file_name\tobject_annotation_category\tobject_comment\n[t]\t[t]\t[t]\t[t]\n"
)


def _build(root: Path, shared: Path) -> dict[str, dict]:
    """The corpus: case name -> what must come of it."""
    cases: dict[str, dict] = {}

    d = root / "ecotaxa_quote"  # a comment opening a quote that never closes
    d.mkdir()
    rows = [("a1", '"approx. 2 mm'), ("a2", "ok"), ("a3", "fine"), ("a4", '"quoted"')]
    for i, (oid, _) in enumerate(rows):
        (d / f"{oid}.png").write_bytes(_png(i * 20))
    (d / "ecotaxa_q.tsv").write_text(
        _TSV_HEAD + "".join(f"{o}\t{o}.png\tCopepoda\t{c}\n" for o, c in rows)
    )
    cases["ecotaxa_quote"] = {"stored": 3, "reasons": {"bad_row": 1}}

    d = root / "label_1mb"  # a 1 MB label: bounded before any parser sees it
    d.mkdir()
    (d / "x.png").write_bytes(_png(7))
    (d / "y.png").write_bytes(_png(9))
    (d / "ecotaxa_l.tsv").write_text(
        _TSV_HEAD + "x\tx.png\t" + "Copepoda<" * 116_000 + "\t\ny\ty.png\tCopepoda\t\n"
    )
    cases["label_1mb"] = {"stored": 1, "reasons": {"bad_label": 1}}

    d = root / "table_bomb"  # 300 MB of TSV in a zip of a few hundred KB
    d.mkdir()
    with (
        zipfile.ZipFile(d / "export.zip", "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("ecotaxa_big.tsv", "w", force_zip64=True) as fh,
    ):
        fh.write(_TSV_HEAD.encode())
        line = b"o\tx.png\tCopepoda\t" + b"a" * 1000 + b"\n"
        for _ in range(300_000):
            fh.write(line)
    cases["table_bomb"] = {"stored": 0, "reasons": {"too_compressed": 1}}

    d = root / "gzip_bomb"  # the same as a .tsv.gz
    d.mkdir()
    with gzip.open(d / "ecotaxa_big.tsv.gz", "wb") as fh:
        fh.write(_TSV_HEAD.encode())
        for _ in range(100):
            fh.write(b"o\t\tCopepoda\t" + b"a" * (1 << 20) + b"\n")
    cases["gzip_bomb"] = {"stored": 0, "reasons": {"too_compressed": 1}}

    d = root / "image_bomb"  # a 100 MB "image" member declared in a 100 KB zip
    d.mkdir()
    with zipfile.ZipFile(d / "images.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cop/ok.png", _png(3))
        _zeros_member(zf, "cop/huge.png", 100 << 20)
    cases["image_bomb"] = {"stored": 1, "reasons": {"too_large": 1}, "path": "images.zip"}

    d = root / "zip_of_zips"  # images in a zip in a zip: accounted for, not "read 0"
    d.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("a.png", _png(1))
    with zipfile.ZipFile(d / "outer.zip", "w") as zf:
        zf.writestr("inner.zip", inner.getvalue())
    cases["zip_of_zips"] = {"stored": 0, "reasons": {"unsupported_format": 1}}

    d = root / "devices"  # a link to /dev/zero and a FIFO in an image folder
    (d / "cop").mkdir(parents=True)
    (d / "cop" / "ok.png").write_bytes(_png(5))
    os.symlink("/dev/zero", d / "cop" / "zero.png")
    os.mkfifo(d / "cop" / "fifo.png")
    cases["devices"] = {"stored": 1, "reasons": {"not_regular": 2}}

    # IFCB: a real SMHI bin (../shared/data) whose ADC rows get a negative width and an inf
    src = shared / "ifcb_bins" / "smhi" / "bins"
    stem = "D20220519T124533_IFCB134"
    for case, edit in (("ifcb_negative", ("-20", None)), ("ifcb_inf", ("inf", "1e400"))):
        d = root / case
        d.mkdir()
        for suffix in (".hdr", ".roi"):
            shutil.copy(src / f"{stem}{suffix}", d / f"{stem}{suffix}")
        lines = (src / f"{stem}.adc").read_text().splitlines()
        f = lines[1].split(",")
        f[15] = edit[0]
        if edit[1]:
            f[16] = edit[1]
        lines[1] = ",".join(f)
        (d / f"{stem}.adc").write_text("\n".join(lines) + "\n")
    d = root / "ifcb_fifo"  # the bin's .roi is a FIFO: not a file of the bin, never opened
    d.mkdir()
    for suffix in (".hdr", ".adc"):
        shutil.copy(src / f"{stem}{suffix}", d / f"{stem}{suffix}")
    os.mkfifo(d / f"{stem}.roi")
    cases["ifcb_fifo"] = {"stored": 0, "reasons": {"partial_bin": 1}}
    cases["ifcb_negative"] = {"stored": 16, "reasons": {"bad_row": 1}}  # 17 ROIs
    cases["ifcb_inf"] = {"stored": 0, "reasons": {"invalid_bin": 1}}

    # FlowCam: a real run's list (../shared/data/flowcam_protist) with a negative field
    # count, and one naming a collage outside its run folder
    run = next(iter(sorted((shared / "flowcam_protist" / "raw_runs").glob("*/*.lst"))))
    for case in ("flowcam_negative", "flowcam_escape"):
        d = root / case
        shutil.copytree(run.parent, d)
        lst = d / run.name
        lines = lst.read_text(errors="replace").splitlines()
        if case == "flowcam_negative":
            lines = [("num-fields|-3" if ln.startswith("num-fields|") else ln) for ln in lines]
        else:
            n = int(next(ln for ln in lines if ln.startswith("num-fields|")).split("|")[1])
            head = next(i for i, ln in enumerate(lines) if ln.startswith("num-fields|"))
            names = [ln.split("|")[0] for ln in lines[head + 1 : head + 1 + n]]
            col = names.index("collage_file")
            for i in range(head + 1 + n, len(lines)):
                cells = lines[i].split("|")
                if len(cells) == n:
                    cells[col] = "../../../../etc/passwd"
                    lines[i] = "|".join(cells)
        lst.write_text("\n".join(lines) + "\n")
    cases["flowcam_negative"] = {"stored": 0, "reasons": {"invalid_list": 1}}
    d = root / "flowcam_fifo"  # a list file that is a FIFO
    d.mkdir()
    os.mkfifo(d / "run.lst")
    cases["flowcam_fifo"] = {"stored": 0, "reasons": {"invalid_list": 1}}
    cases["flowcam_escape"] = {"stored": 0, "only": "unsafe_path"}

    d = root / "extract_bomb"  # --from extraction: 200 MB of zeros in a 200 KB zip
    d.mkdir()
    with zipfile.ZipFile(d / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        _zeros_member(zf, "zeros.bin", 200 << 20)
    cases["extract_bomb"] = {"error": "expands past", "path": "bomb.zip"}

    d = root / "extract_tar_bomb"  # the same as a .tar.gz
    d.mkdir()
    with tarfile.open(d / "bomb.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 200 << 20
        tf.addfile(info, _Zeros(info.size))
    cases["extract_tar_bomb"] = {"error": "expands past", "path": "bomb.tar.gz"}
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("hostile")
    cases = _build(root, shared_data)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _DRIVER,
            str(root),
            json.dumps([[c, w.get("path", "")] for c, w in cases.items()]),
        ],
        capture_output=True,
        text=True,
        timeout=MAX_CASE_S * len(cases),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    *lines, last = proc.stdout.splitlines()
    results = {r["case"]: r for r in map(json.loads, lines)}
    return cases, results, json.loads(last)["peak_kib"] / 1024


def test_peak_memory_is_bounded(corpus):
    _, results, peak_mb = corpus
    assert len(results) == len(corpus[0])
    assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize(
    "case",
    [
        "ecotaxa_quote",
        "label_1mb",
        "table_bomb",
        "gzip_bomb",
        "image_bomb",
        "zip_of_zips",
        "devices",
        "ifcb_negative",
        "ifcb_inf",
        "ifcb_fifo",
        "flowcam_negative",
        "flowcam_escape",
        "flowcam_fifo",
        "extract_bomb",
        "extract_tar_bomb",
    ],
)
def test_every_input_accounted_for(corpus, case):
    cases, results, _ = corpus
    want, got = cases[case], results[case]
    assert got["seconds"] < MAX_CASE_S
    if "error" in want:
        assert want["error"] in got["error"] and "\n" not in got["error"]
        return
    assert "error" not in got, got
    assert got["read"] == got["stored"] + got["rejected"] > 0
    assert got["stored"] == want["stored"], got
    if "only" in want:
        assert set(got["reasons"]) == {want["only"]}, got
    else:
        assert got["reasons"] == want["reasons"], got
    assert len(got["predict"]) == got["read"]  # prediction inputs: the same accounting


# ------------------------------------------------------------------ one-line errors
def _pz(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = "import sys; from planktonzilla.cli import app; sys.argv[0] = 'pz'; app()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )


def _folder(root: Path) -> Path:
    (root / "im" / "cop").mkdir(parents=True)
    for i in range(3):
        (root / "im" / "cop" / f"{i}.png").write_bytes(_png(i * 50))
    return root / "im"


def test_locked_and_damaged_stores_are_one_line_errors(tmp_path):
    import fcntl

    images, store = _folder(tmp_path), tmp_path / "store"
    assert (
        _pz("ingest", "folder", str(images), "--store", str(store), "--source", "a").returncode == 0
    )
    with open(store / ".lock", "w") as fh:  # another process writing
        fcntl.flock(fh, fcntl.LOCK_EX)
        locked = _pz("ingest", "folder", str(images), "--store", str(store), "--source", "b")
    manifest = (store / "manifest.json").read_text()
    (store / "manifest.json").write_text(manifest[: len(manifest) // 2])  # torn
    damaged = _pz("stats", "--store", str(store))
    for result, words in ((locked, "another process"), (damaged, "not valid JSON")):
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # one message (may wrap once)
    debug = _pz("--debug", "stats", "--store", str(store))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_full_disk_is_a_one_line_error(tmp_path):
    """/dev/full answers every write with ENOSPC (full(4)): a real full-disk condition."""
    images, store = _folder(tmp_path), tmp_path / "store"
    assert (
        _pz("ingest", "folder", str(images), "--store", str(store), "--source", "a").returncode == 0
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = "import sys; from planktonzilla.cli import app; sys.argv[0] = 'pz'; app()"
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-c", code, "query", "select * from objects", "--store", str(store),
             "--format", "csv"],
            stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert "No space left" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_workers_without_a_main_guard_is_a_clear_error(tmp_path):
    """The README's ingest(workers=2) example saved as a script without
    `if __name__ == '__main__':` must stop with an error, not respawn workers forever."""
    images = _folder(tmp_path)
    script = tmp_path / "ingest_script.py"
    script.write_text(
        "from planktonzilla import ObjectStore\n"
        "from planktonzilla.readers.folder import read_folder\n"
        f"ObjectStore({str(tmp_path / 'store')!r}).ingest(\n"
        f"    read_folder({str(images)!r}), source='a', workers=2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0
    assert "__name__ == '__main__'" in result.stderr
