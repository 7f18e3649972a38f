"""What wraps every capability, apart from them: who may call (host allowlist, API keys, CORS, security headers)
and what is counted (requests by route and status, their time). Both pure ASGI: Starlette's BaseHTTPMiddleware
costs a task and a stream copy per request, measured as a large share of a small request's time."""
from __future__ import annotations

import json
import time

from starlette.routing import Match, Route

from .keys import KeyRing
from .metrics import SERVED, Metrics
from .settings import ServeSettings

# Need an API key when the service has keys (the API's description too: it names the model); /healthz, /readyz and
# the page (/) stay open. The management API (ADMIN) needs an admin key, always: a user key does not open it.
PROTECTED = ("/v1/", "/metrics", "/docs", "/openapi.json")
ADMIN = "/admin/"


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; "
                                                 b"style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
                                                 b"frame-ancestors 'none'")]


class AccessMiddleware:
    """Who may call: the Host header allowlist (DNS rebinding), API keys on the PROTECTED paths, CORS only for
    the configured origins, and security headers on every response. Pure ASGI, one line per refusal."""

    def __init__(self, app, settings: ServeSettings, ring: KeyRing, admin: KeyRing) -> None:
        self.app, self.settings = app, settings
        self.state = app.state
        self.hosts = settings.host_names()
        self.ring, self.admin = ring, admin
        self.origins = {o.rstrip("/") for o in settings.cors_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                (b"access-control-allow-headers", b"authorization, x-api-key, content-type"),
                (b"access-control-allow-methods", b"GET, POST")] if origin and origin in self.origins else []

        async def send_secured(message):
            if message["type"] == "http.response.start":
                extra = [h for h in SECURITY_HEADERS + cors if h[0] not in {k.lower() for k, _ in message["headers"]}]
                message = dict(message, headers=list(message["headers"]) + extra)
            await send(message)

        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 \
            else host
        if self.hosts is not None and name not in self.hosts:
            return await _refuse(send_secured, 403, f"host {host[:100]!r} is not served here (allowed: "
                                 f"{', '.join(sorted(self.hosts))}; see --allowed-host)")
        path = scope["path"]
        if scope["method"] == "OPTIONS" and cors:
            return await _refuse(send_secured, 204, None)
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if path.startswith(ADMIN):
            if not self.admin.keys():
                return await _refuse(send_secured, 403, "the management API is off: start serve with "
                                     "--admin-key-file FILE (or set RESNETLAB_ADMIN_KEY)")
            if not given or not self.admin.accepts(given):
                return await _refuse(send_secured, 401, "missing or wrong admin key: send Authorization: Bearer "
                                     "ADMIN_KEY or X-API-Key: ADMIN_KEY", [(b"www-authenticate",
                                                                           b'Bearer realm="resnetlab-admin"')])
        keys = self.ring.keys()
        if keys and path.startswith(PROTECTED):
            if not given or not self.ring.accepts(given):
                return await _refuse(send_secured, 401, "missing or wrong API key: send Authorization: Bearer KEY "
                                     "or X-API-Key: KEY", [(b"www-authenticate", b'Bearer realm="resnetlab"')])
        await self.app(scope, receive, send_secured)


async def _refuse(send, status: int, detail: str | None, headers: list | None = None) -> None:
    body = b"" if detail is None else json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})




def route_label(routes: list[Route], scope) -> str:
    """The path template of the route that served this request, as the router recorded it (scope["route"]), or,
    for a request refused before routing (a wrong key or host), of the route that would have served it; "other"
    for a path no route serves. Read from the routes themselves, so every route a capability adds is counted
    under its own name."""
    route = scope.get("route")
    if isinstance(route, Route):
        return route.path
    for candidate in routes:
        if candidate.matches(scope)[0] != Match.NONE:  # FULL, or PARTIAL: the path with another method
            return candidate.path
    return "other"


class MetricsMiddleware:
    """Counts requests by route and status and times them (pure ASGI: Starlette's BaseHTTPMiddleware
    costs a task and a stream copy per request, measured as a large share of a small request's time)."""

    def __init__(self, app, metrics: Metrics, routes: list[Route]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        work = scope["path"].startswith("/v1/")
        self.metrics.request_begins()
        if work:
            self.metrics.work_begins()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if work:
                self.metrics.work_ends()
            model, version = scope.get(SERVED, ("", ""))
            self.metrics.request_done(route_label(self.routes, scope), status["code"], time.perf_counter() - start,
                                      model, version)
