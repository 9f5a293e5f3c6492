"""The search service: a JSON API (with OpenAPI docs at ``/docs``) and a web page, over one Searcher.

Routes::

    GET  /                          the search page (search/static/)
    GET  /api/info                  the collection: size, model, index kind and measured recall
    GET  /api/search?q=TEXT&k=20    images matching a text
    POST /api/search/image?k=20     images like an uploaded one (multipart field "file")
    GET  /api/similar/{id}?k=20     images like image {id} of the collection
    GET  /api/thumbnail/{id}        a JPEG thumbnail of image {id} of the collection

Bad requests get a 4xx answer with ``{"detail": message}``: k out of range, an empty or over-long
query, an upload over the byte or pixel limit (413, checked from ``Content-Length`` or while the body
arrives, before it is stored), a file that is not an image (415/422), an unknown id (404). The model
and the index are loaded once; the routes are plain functions run on the server's thread pool.
"""

from pathlib import Path
from typing import Annotated, Any

# Imported at module level (no `from __future__ import annotations` here): FastAPI reads the route
# functions' annotations at run time. This module is imported only to serve.
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .searcher import QueryError, Searcher

STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the uploaded file


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is read into memory."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            detail = f"the request has {length} bytes; the limit is {self.max_bytes}"
            return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # no Content-Length (chunked): stop reading here
                raise HTTPException(413, f"the request body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(searcher: Searcher) -> FastAPI:
    """The FastAPI application serving ``searcher``."""
    limits = searcher.limits
    app = FastAPI(
        title="cliplab search",
        description="Search a collection embedded with `cliplab embed` by text or by example image.",
        version="1",
    )
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes + MULTIPART_OVERHEAD)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    K = Annotated[int, Query(description=f"number of results, 1 to {limits.max_k}")]

    @app.get("/api/info", summary="the collection and its index")
    def info() -> dict[str, Any]:
        index = searcher.index
        return {"n": len(index), "dim": index.collection.dim, "kind": index.kind,
                "recall_at_10": index.info.get("recall_at_10"), "max_k": limits.max_k,
                "model": {k: index.collection.model.get(k) for k in ("spec", "fingerprint")}}  # fmt: skip

    @app.get("/api/search", summary="images matching a text")
    def search_text(q: Annotated[str, Query(description="what the images should show")], k: K = 20):
        return _with_thumbnails(searcher.search_text(q, k))

    @app.post("/api/search/image", summary="images like an uploaded image")
    def search_image(file: Annotated[UploadFile, File(description="an image file")], k: K = 20):
        data = file.file.read(limits.max_upload_bytes + 1)
        return _with_thumbnails(searcher.search_image(data, k, name=file.filename or "upload"))

    @app.get("/api/similar/{image_id}", summary="images like an image of the collection")
    def search_similar(image_id: int, k: K = 20):
        return _with_thumbnails(searcher.search_similar(image_id, k))

    @app.get("/api/thumbnail/{image_id}", summary="a JPEG thumbnail of an image of the collection")
    def thumbnail(image_id: int):
        return Response(searcher.thumbnail(image_id), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})  # fmt: skip

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _with_thumbnails(answer: dict[str, Any]) -> dict[str, Any]:
    for result in answer["results"]:
        result["thumbnail"] = f"/api/thumbnail/{result['id']}"
    return answer
