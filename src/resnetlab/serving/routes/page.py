"""The web page and the API's own description (/docs, from the OpenAPI schema)."""
from __future__ import annotations

import html
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files("resnetlab.serving").joinpath("page.html").read_text(encoding="utf-8"))


async def docs(request: Request) -> HTMLResponse:
    """The API described from its own OpenAPI schema, as plain HTML (no scripts or assets from elsewhere); added
    by the app only when settings.docs."""
    schema = request.app.openapi()
    rows = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            rows.append(f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td><td>{html.escape(params)}"
                        f"</td><td>{html.escape(op.get('summary', ''))}. {html.escape(op.get('description', ''))}"
                        f"</td></tr>")
    auth = ("Send the API key as <code>Authorization: Bearer KEY</code> or <code>X-API-Key: KEY</code> on /v1/* and "
            "/metrics." if request.app.state.service.keys.keys() else "This service has no API keys.")
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{html.escape(schema['info']['title'])} API</title>"
                        f"<h1>{html.escape(schema['info']['title'])} {html.escape(schema['info']['version'])}</h1>"
                        f"<p>{html.escape(schema['info'].get('description', ''))}</p><p>{auth}</p>"
                        f"<table border=1 cellpadding=4><tr><th>route</th><th>query</th><th>what</th></tr>"
                        f"{''.join(rows)}</table><p>Machine-readable: <a href=/openapi.json>/openapi.json</a></p>")
