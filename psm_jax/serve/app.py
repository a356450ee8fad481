"""The ASGI app (Starlette): one static page and a small JSON/PNG API around a model backend.

    GET  /                      the page (static/index.html, app.js, style.css; nothing from a CDN)
    GET  /api/info              model name, kind, resolution, default T and T range, checkpoint step, limits
    GET  /api/examples          {"count", "resolution", "source"} of the held-out images
    GET  /api/examples/{i}      held-out image i as PNG
    POST /api/inpaint           multipart: image (PNG/JPEG), mask (PNG, white = hole), iters, seed, samples,
                                strategy (pad|resize|crop), trajectory (0|1)
                                -> image/png (one sample, trajectory=0), else JSON with base64 PNGs

Errors are JSON ``{"error": "<one line>"}`` with a 4xx status (404 unknown path or example, 405 wrong method,
400 bad field, 413 too large, 503 queue full). The page's files are read once at start-up and served from
memory: no part of a URL ever names a file.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from psm_jax.serve import forms, render
from psm_jax.serve.examples import Examples
from psm_jax.serve.model import Backend
from psm_jax.serve.worker import Busy, Worker

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "/style.css": ("style.css", "text/css; charset=utf-8")}
# The page may load nothing from elsewhere; images are data: / blob: URLs made by the page itself.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=SECURITY_HEADERS)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it passes ``max_bytes``, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise forms.BadRequest(413, f"upload is {declared} bytes; this server takes at most {max_bytes} "
                                    "(--max_upload_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise forms.BadRequest(413, f"upload exceeds {max_bytes} bytes (--max_upload_bytes)")
    return bytes(body)


async def _read_form(request: Request, max_bytes: int) -> tuple[dict[str, str], dict[str, bytes]]:
    """(text fields, file fields) of a multipart body of at most ``max_bytes``."""
    body = await _read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise forms.BadRequest(400, "expected a multipart/form-data body (fields image, mask, ...)")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    # Parsed outside the app scope, so a malformed body raises MultiPartException (not a bare HTTPException).
    scope = {k: v for k, v in request.scope.items() if k != "app"}
    try:
        form = await Request(scope, replay).form(max_files=len(forms.FILE_FIELDS), max_fields=16,
                                                 max_part_size=max_bytes)
    except MultiPartException as e:
        raise forms.BadRequest(400, f"malformed multipart body: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - python-multipart raises its own errors on garbage
        raise forms.BadRequest(400, f"malformed multipart body ({type(e).__name__})") from None
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if name in fields or name in files:
                raise forms.BadRequest(400, f"field {name[:24]!r} given twice")
            if isinstance(value, UploadFile):
                files[name] = await value.read()
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, files


def create_app(backend: Backend, *, limits: forms.Limits = forms.Limits(), max_queue: int = 64,
               examples: int = 300, warmup: bool = False) -> Starlette:
    """The app around ``backend``. ``warmup`` queues a compile of the default T at the training resolution."""
    worker = Worker(lambda req: backend.inpaint(req.image, req.known, iters=req.iters, seed=req.seed,
                                                samples=req.samples, strategy=req.strategy), max_queue)
    gallery = Examples(backend.config, examples)
    strategies = tuple(backend.info()["strategies"])
    pages = {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}

    async def page(request: Request) -> Response:
        body, kind = pages[request.url.path]
        return Response(body, media_type=kind, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        data = backend.info()
        data.update(max_upload_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels,
                    max_samples=limits.max_samples, max_queue=max_queue, pending=worker.pending,
                    examples=len(gallery))
        return JSONResponse(data, headers=SECURITY_HEADERS)

    async def examples_index(request: Request) -> Response:
        return JSONResponse({"count": len(gallery), "resolution": backend.resolution,
                             "source": getattr(gallery, "source_name", None), "note": gallery.reason or None},
                            headers=SECURITY_HEADERS)

    async def example(request: Request) -> Response:
        i = request.path_params["i"]
        if not 0 <= i < len(gallery):
            return error(404, f"example {i}: out of range (there are {len(gallery)}: 0..{len(gallery) - 1})")
        png = await run_in_threadpool(gallery.png, i)
        if png is None:
            return error(404, f"example {i}: the record cannot be decoded")
        return Response(png, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})

    async def inpaint(request: Request) -> Response:
        try:
            fields, files = await _read_form(request, limits.max_upload_bytes)
            req = await run_in_threadpool(
                forms.parse, fields, files, limits=limits, iters_range=backend.iters_range,
                default_iters=backend.default_iters, strategies=strategies)
        except forms.BadRequest as e:
            return error(e.status, e.message)
        try:
            result = await worker.submit(req)
        except Busy as e:
            return JSONResponse({"error": str(e)}, status_code=503, headers={**SECURITY_HEADERS, "Retry-After": "2"})
        except ValueError as e:   # the model's own input checks (should not trigger after forms.parse)
            return error(400, str(e))
        if req.samples == 1 and not req.trajectory:
            png = await run_in_threadpool(render.png_bytes, result.outputs[0])
            return Response(png, media_type="image/png", headers=SECURITY_HEADERS)
        body = await run_in_threadpool(render.inpaint_json, req, result, with_trajectory=req.trajectory)
        return JSONResponse(body, headers=SECURITY_HEADERS)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or "error"
        if status == 404:
            detail = f"no such path: {request.url.path[:80]}"
        elif status == 405:
            detail = f"method {request.method} not allowed on {request.url.path[:80]}"
        return error(status, detail)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    routes = [Route(p, page, methods=["GET"]) for p in PAGE_FILES] + [
        Route("/api/info", info, methods=["GET"]),
        Route("/api/examples", examples_index, methods=["GET"]),
        Route("/api/examples/{i:int}", example, methods=["GET"]),
        Route("/api/inpaint", inpaint, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await run_in_threadpool(worker.close)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error},
                    lifespan=lifespan)
    app.state.backend, app.state.worker, app.state.examples = backend, worker, gallery
    if warmup:
        worker.call_soon(backend.warmup)
    return app
