"""The FastAPI application behind `pz serve`: the page, the JSON API and the safety limits.

    from planktonzilla.serve import Limits, create_app
    app = create_app("models/supervised", store="store", limits=Limits(max_files=100))
    # uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints (JSON unless said otherwise; every error is ``{"error": {"code", "message",
"file"}}`` with a 4xx status, plus ``"errors"`` listing every file when all files failed):

- ``POST /api/predict`` multipart field ``files`` (images and/or zip archives), query
  ``top_k``, ``thumbnails``: predictions, per-file ``errors``, and an ``id`` whose results
  download from ``GET /api/results/{id}?format=csv|ecotaxa`` (kept in memory for the last
  `KEPT_RESULTS` requests).
- ``GET /api/model``, ``GET /api/health``; with a store: ``GET /api/stats``,
  ``GET /api/images/{object_id}?size=N``, ``GET /api/abundance?rank=&unit=&limit=`` (counts and
  concentrations per sample x taxon, planktonzilla.ecology) with its plot at
  ``GET /api/abundance.png``, and ``GET /report`` (the newest ``evaluations/*/report.html``).
  Without a store these answer 404.
- ``GET /`` the page; ``GET /docs`` the API documentation; ``GET /openapi.json``.

Offline docs: FastAPI's default ``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript
and CSS from a CDN, which a ship or lab without internet cannot reach and which would make
the page depend on a third party. Both are turned off; ``/docs`` is instead a small
self-hosted page (``static/docs.html``) that renders ``/openapi.json`` with plain JS. The
pages are served with a Content-Security-Policy that allows this origin only.

Limits are enforced while reading: a declared body over ``max_request_bytes`` is refused
before it is read, and a body without a declared length is cut off as soon as it passes the
limit. Predictions run in a worker thread with the one shared model behind a lock, so the
event loop keeps answering while the model works.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette._utils import parse_host_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from planktonzilla.serve.browse import StoreBrowser, thumbnail_png
from planktonzilla.serve.uploads import CheckedImage, Limits, UploadError, expand

STATIC = Path(__file__).with_name("static")
KEPT_RESULTS = 64  # prediction results kept for download (each at most max_files rows)
THUMBNAIL_SIZE = 96
# Pages may load from this origin only: no CDN, no external fonts, no inline script.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# The evaluation report is one self-contained file: inline CSS and data-URI plots only.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_FILES_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "images (PNG, JPEG, TIFF, BMP, GIF) and/or zip "
                        "archives of them; the type is read from the content",
                    }
                },
            }
        }
    },
}


def _error_doc(why: str, code: str) -> dict:
    example = {"error": {"code": code, "message": "…", "file": "upload.zip"}}
    return {"description": why, "content": {"application/json": {"example": example}}}


_ERRORS = {
    400: _error_doc("bad request (unsafe archive path, no files…)", "unsafe_path"),
    413: _error_doc("too large (request, image pixels, archive expansion, count)", "zip_bomb"),
    415: _error_doc("unsupported file type", "unsupported_format"),
    422: _error_doc("undecodable image (corrupt, truncated, empty)", "truncated"),
}


#: Longest wait, in seconds, for the next chunk of a request body.
BODY_CHUNK_TIMEOUT = 15.0

#: Host names a loopback server answers to (`create_app(allowed_hosts=…)`).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_app(
    model_dir: str | Path | Any,
    store: str | Path | None = None,
    limits: Limits = Limits(),  # frozen: safe as a default
    *,
    device: str = "auto",
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
    body_timeout: float = BODY_CHUNK_TIMEOUT,
) -> FastAPI:
    """The web app for the model in `model_dir` (or an already loaded
    `planktonzilla.inference.Classifier`), browsing `store` when given. Requests whose `Host`
    header names none of `allowed_hosts` get 400: a web page on another site cannot reach a
    loopback server through a name it controls (DNS rebinding); `("*",)` allows any."""
    from planktonzilla._version import __version__
    from planktonzilla.inference import Classifier

    classifier = (
        model_dir
        if isinstance(model_dir, Classifier)
        else Classifier.load(model_dir, device=device)
    )
    browser = StoreBrowser(store) if store is not None else None
    predictor = _Predictor(classifier, limits)

    app = FastAPI(
        title="planktonzilla",
        version=__version__,
        description="Plankton image classification with lineage-aware answers. "
        "Errors are `{error: {code, message, file}}` with a 4xx status.",
        docs_url=None,  # the default pages load Swagger / ReDoc from a CDN: see module doc
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    _document_errors(app)
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(_HostAllowList, allowed_hosts=allowed_hosts)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_request_bytes, chunk_timeout=body_timeout)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(UploadError(code, str(exc.detail), status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return _error_response(UploadError("invalid_parameter", message or "invalid request"))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # details stay in the server log (uvicorn prints the traceback)
        message = f"internal error ({type(exc).__name__}); see the server log"
        return _error_response(UploadError("internal_error", message, status=500))

    # ------------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/report", include_in_schema=False)
    def report() -> FileResponse:
        path = browser.latest_report() if browser is not None else None
        if path is None:
            raise UploadError("not_found", "no evaluation report (STORE/evaluations/*/report.html)")
        return FileResponse(path, media_type="text/html")

    # ------------------------------------------------------------------ API
    @app.get("/api/health", tags=["service"])
    def health() -> dict:
        """Liveness: the model is loaded and the server answers."""
        return {
            "status": "ok",
            "version": __version__,
            "model": classifier.kind,
            "classes": len(classifier.classes),
            "store": browser is not None,
        }

    @app.get("/api/model", tags=["service"])
    def model() -> dict:
        """The model: kind, classes with their lineages, thresholds, and the upload limits."""
        return {
            "kind": classifier.kind,
            "image_size": classifier.image_size,
            "classes": classifier.classes,
            "class_lineages": classifier.class_lineages,
            "thresholds": classifier.thresholds,
            "limits": asdict(limits),
        }

    @app.post(
        "/api/predict",
        tags=["predict"],
        openapi_extra={"requestBody": _FILES_BODY},
        responses=_ERRORS,
    )
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, le=50, description="labels per image, best first"),
        thumbnails: bool = Query(False, description="include a small PNG of each image"),
    ) -> dict:
        """Classify uploaded images (and the images inside uploaded zip archives). Each
        prediction carries its top-k labels, the lineage of the top label, the deepest rank
        the model is confident to, a living / non-living call and an out-of-distribution
        flag. Bad files are listed in `errors`; when every file is bad the answer is a 4xx."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UploadError(
                "unsupported_media_type", "send multipart/form-data with a field named 'files'"
            )
        try:
            form = await request.form(
                max_files=limits.max_files, max_fields=16, max_part_size=64 * 1024
            )
        except HTTPException as exc:  # Starlette's multipart errors
            detail = str(exc.detail)
            code = "too_many_files" if "Too many files" in detail else "bad_multipart"
            raise UploadError(code, detail) from None
        try:
            uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not uploads:
                raise UploadError("no_files", "no files in the multipart field 'files'")
            files = [(_clean_name(f.filename, i), f.file) for i, f in enumerate(uploads)]
            return await run_in_threadpool(predictor.predict, files, top_k, thumbnails)
        finally:
            await form.close()

    @app.get(
        "/api/results/{result_id}",
        tags=["predict"],
        responses={400: {"description": "unknown format"}, 404: {"description": "unknown id"}},
    )
    def results(
        result_id: str,
        format: str = Query("csv", pattern="^(csv|ecotaxa)$", description="csv or ecotaxa"),
    ) -> Response:
        """Download the rows of an earlier `/api/predict` answer as CSV (every file, errors
        included) or as an EcoTaxa import TSV (the predicted images)."""
        from planktonzilla.inference.writers import csv_bytes, ecotaxa_tsv_bytes

        rows = predictor.results.get(result_id)
        if rows is None:
            raise UploadError("not_found", f"no results {result_id!r} (kept for a while only)")
        if format == "csv":
            body, media, suffix = csv_bytes(rows), "text/csv", "csv"
        else:
            # the writer leaves out the files that failed
            body, media, suffix = ecotaxa_tsv_bytes(rows), "text/tab-separated-values", "tsv"
        name = f"planktonzilla-{result_id}.{suffix}"
        return Response(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/api/stats", tags=["store"], responses={404: {"description": "no store"}})
    def stats() -> dict:
        """Counts per source / instrument / taxon, sampling locations, sample object ids per
        class and the latest evaluation report of the store."""
        return _browser().stats()

    @app.get(
        "/api/images/{object_id}",
        tags=["store"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {}},
    )
    def image(
        object_id: str,
        size: int | None = Query(None, ge=16, le=1024, description="thumbnail size (px)"),
    ) -> Response:
        """A stored image by object id (content-addressed, so cached for good)."""
        found = _browser().image(object_id, size)
        if found is None:
            raise UploadError("not_found", f"no image {object_id!r} in the store")
        data, media = found
        return Response(
            data, media_type=media, headers={"Cache-Control": "public, max-age=31536000"}
        )

    @app.get("/api/abundance", tags=["store"], responses={404: {"description": "no store"}})
    def abundance_rows(
        rank: str = Query("genus", pattern="^(kingdom|phylum|class|order|family|genus|species)$"),
        unit: str = Query("L", pattern="^(ml|L|m3)$"),
        limit: int = Query(500, ge=1, le=10000, description="rows with a count, at most"),
    ) -> dict:
        """Counts and concentrations per sample x taxon from the store's labels and sample
        volumes (rows with a count > 0, most abundant first), and the plot's URL."""
        table, _ = _browser().abundance(rank, unit)
        rows = [r for r in table.to_pylist() if r["count"] > 0]
        rows.sort(key=lambda r: (r["rank"] == "total", -(r["concentration"] or 0), -r["count"]))
        for r in rows:
            r["time_utc"] = r["time_utc"].isoformat() if r["time_utc"] else None
        return {
            "rank": rank,
            "unit": unit,
            "rows": rows[:limit],
            "total_rows": len(rows),
            "plot": f"/api/abundance.png?rank={rank}&unit={unit}",
        }

    @app.get(
        "/api/abundance.png",
        tags=["store"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {}},
    )
    def abundance_plot(
        rank: str = Query("genus", pattern="^(kingdom|phylum|class|order|family|genus|species)$"),
        unit: str = Query("L", pattern="^(ml|L|m3)$"),
    ) -> Response:
        """The plot of the most abundant taxa: time series, or depth profiles for profilers."""
        _, png = _browser().abundance(rank, unit)
        return Response(png, media_type="image/png")

    def _browser() -> StoreBrowser:
        if browser is None:
            raise UploadError("not_found", "this server has no store (start it with --store)")
        return browser

    return app


def _document_errors(app: FastAPI) -> None:
    """FastAPI documents a 422 "Validation Error" for every parameter; ours answer 400
    (422 is kept for undecodable images)."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # cached by FastAPI; the edit below is idempotent
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.get("422", {}).get("description") == "Validation Error":
                    del responses["422"]
                    responses.setdefault("400", {"description": "invalid parameter"})
        return schema

    app.openapi = openapi


class _Predictor:
    """The shared classifier, its lock, and the results kept for download."""

    def __init__(self, classifier, limits: Limits):
        self.classifier = classifier
        self.limits = limits
        self.results = _Results(KEPT_RESULTS)
        self._lock = threading.Lock()  # one batch at a time: torch already uses every core

    def predict(self, files: list[tuple[str, Any]], top_k: int, thumbnails: bool) -> dict:
        from planktonzilla.inference import Prediction
        from planktonzilla.inference.writers import prediction_rows
        from planktonzilla.records import Record

        start = time.perf_counter()
        contents = []
        for name, handle in files:
            handle.seek(0)
            contents.append((name, handle.read()))
        images, errors = expand(contents, self.limits)
        del contents
        top_k = min(top_k, len(self.classifier.classes))
        predictions = []
        if images:
            with self._lock:
                predictions = self.classifier.predict([im.data for im in images], top_k=top_k)
        good: list[tuple[CheckedImage, Any]] = []
        for im, p in zip(images, predictions, strict=True):
            if p.error:
                code, _, message = p.error.partition(": ")
                errors.append(UploadError(code, message or p.error, im.name))
            else:
                good.append((im, p))
        if not good:
            first = errors[0]
            first.errors = errors
            raise first
        records = [Record(origin=im.name, image=None) for im, _ in good]
        records += [Record(origin=e.file or "", image=None) for e in errors]
        failed = [Prediction(error=f"{e.code}: {e.message}") for e in errors]
        rows = prediction_rows(records, [p for _, p in good] + failed, top_k)
        result_id = self.results.put(rows)
        return {
            "id": result_id,
            "top_k": top_k,
            "model": self.classifier.kind,
            "count": len(good),
            "predictions": [
                _prediction_json(im, p, row.get("object_id"), thumbnails)
                for (im, p), row in zip(good, rows, strict=False)
            ],
            "errors": [e.to_dict() for e in errors],
            "downloads": {
                "csv": f"/api/results/{result_id}?format=csv",
                "ecotaxa": f"/api/results/{result_id}?format=ecotaxa",
            },
            "seconds": round(time.perf_counter() - start, 3),
        }


def _prediction_json(im: CheckedImage, p, object_id: str | None, thumbnail: bool) -> dict:
    out = {
        "file": im.name,
        "object_id": object_id,
        "format": im.format,
        "width": im.width,
        "height": im.height,
        "label": p.label,
        "probability": p.probability,
        "top": [{"label": label, "probability": prob} for label, prob in p.top],
        "lineage": p.lineage,
        "confident": {
            "rank": p.confident_rank,
            "name": p.confident_name,
            "probability": p.confident_probability,
        },
        "living": p.living,
        "living_probability": p.living_probability,
        "ood": p.ood,
        "ood_score": p.ood_score,
    }
    if thumbnail:
        try:
            png = thumbnail_png(im.data, THUMBNAIL_SIZE)
            out["thumbnail"] = "data:image/png;base64," + base64.b64encode(png).decode()
        except Exception:  # noqa: BLE001 - a thumbnail is decoration: never fail the answer
            out["thumbnail"] = None
    return out


class _Results:
    """The last `size` results by id (least recently stored dropped first)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, list[dict]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, rows: list[dict]) -> str:
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._items[key] = rows
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> list[dict] | None:
        with self._lock:
            return self._items.get(key)


def _clean_name(filename: str | None, index: int) -> str:
    # names are only echoed back (JSON, CSV); still, keep them printable and bounded
    name = _CONTROL.sub("", filename or "").strip()[-255:]
    return name or f"upload-{index + 1}"


def _error_response(exc: UploadError) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.to_dict()}
    if exc.errors:
        body["errors"] = [e.to_dict() for e in exc.errors]
    return JSONResponse(body, status_code=exc.status)


class _BodyLimit:
    """Refuses a request body over `max_bytes`: at once when Content-Length says so, else
    as soon as the bytes received pass it (nothing beyond the limit is ever buffered); and a
    body whose next chunk takes over `chunk_timeout` seconds to arrive (a slow-body client
    would otherwise hold a connection, and its buffers, forever)."""

    def __init__(self, app, max_bytes: int, chunk_timeout: float = BODY_CHUNK_TIMEOUT):
        self.app = app
        self.max_bytes = max_bytes
        self.chunk_timeout = chunk_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = UploadError(
            "request_too_large", f"request body over the {self.max_bytes:,}-byte limit"
        )
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                bad = UploadError("bad_request", "invalid Content-Length header")
                return await _error_response(bad)(scope, receive, send)
            if length > self.max_bytes:
                return await _error_response(too_large)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.chunk_timeout)
            except TimeoutError:
                raise UploadError(
                    "request_timeout",
                    f"the request body stalled for over {self.chunk_timeout:g} s",
                    status=408,
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)


class _HostAllowList(TrustedHostMiddleware):
    """Starlette's Host check, answering a foreign host with the app's JSON error shape."""

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.allow_any:
            return await self.app(scope, receive, send)
        parsed = parse_host_header(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
        if parsed is None or parsed.host.lower() not in self.allowed_hosts:
            refused = UploadError(
                "bad_host",
                "this server answers only to " + ", ".join(self.allowed_hosts),
                status=400,
            )
            return await _error_response(refused)(scope, receive, send)
        return await self.app(scope, receive, send)


class _SecurityHeaders:
    """Content-Security-Policy (this origin only), no MIME sniffing, no referrer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        report = scope["path"] == "/report"

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", (REPORT_CSP if report else PAGE_CSP).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if not report:
                    headers.append((b"x-frame-options", b"DENY"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
