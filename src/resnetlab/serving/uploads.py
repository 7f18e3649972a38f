"""Reading an upload within the service's limits: the body (size, time, shutdown), then its files (multipart
fields or the raw body). Shared by every capability that takes images."""
from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from .service import RequestError
from .settings import ServeSettings


async def read_body(request: Request, limit: int, timeout_s: float, stopping: asyncio.Event | None = None) -> bytes:
    """The whole body, within `limit` bytes and `timeout_s` seconds (a client that drips its upload gets 408),
    or 499 when the client goes away (nginx's code: counted, not a server error, no traceback), or 503 when
    the server is shutting down before the upload is complete (so SIGTERM does not wait for slow clients)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body is over the limit of {limit:,} bytes")
            chunks.append(chunk)
    task = asyncio.ensure_future(read())
    stop = asyncio.ensure_future(stopping.wait()) if stopping is not None else None
    try:
        await asyncio.wait([t for t in (task, stop) if t is not None], timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stop is not None:
            stop.cancel()
    if not task.done():
        task.cancel()
        if stopping is not None and stopping.is_set():
            raise RequestError(503, "the server is shutting down; send the request again") from None
        raise RequestError(408, f"request body not received within {timeout_s:g} s") from None
    try:
        task.result()
    except ClientDisconnect:
        raise RequestError(499, "client closed the connection before sending the whole request") from None
    return b"".join(chunks)


async def uploaded_files(request: Request, body: bytes, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each multipart file field, or of the raw body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):  # media types are case-insensitive (RFC 9110)
        return [("body", body)] if body else []
    params = ctype.partition(";")[2]  # the form parser wants the media type in lower case
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", f"multipart/form-data;{params}".encode("latin-1")))

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(dict(request.scope, headers=headers), replay).form(
            max_files=settings.max_files, max_fields=100, max_part_size=settings.max_body_bytes)
    except HTTPException as e:
        if "Too many files" in str(e.detail):
            raise RequestError(413, f"too many files: at most {settings.max_files} per request") from None
        raise RequestError(400, f"malformed multipart body: {e.detail}") from None
    files = [(getattr(v, "filename", None) or k, await v.read()) for k, v in form.multi_items()
             if not isinstance(v, str)]
    await form.close()
    return files
