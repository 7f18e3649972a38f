"""The HTTP application (imports FastAPI, so it is loaded only to serve): the predict service (service.py), the
routes of each capability (routes/), and the middleware around them all (middleware.py). No request can name a
file; model work is batched off the event loop; every bad input is a 4xx with {"detail": reason}."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from .._version import __version__
from ..inference.classifier import ImageClassifier
from .metrics import Metrics
from .middleware import AccessMiddleware, MetricsMiddleware
from .routes import CAPABILITIES
from .routes.page import docs
from .service import PredictService, RequestError
from .settings import ServeSettings


async def request_error(request: Request, e: RequestError) -> JSONResponse:
    return JSONResponse({"detail": e.message}, status_code=e.status)


def create_app(clf: ImageClassifier, settings: ServeSettings | None = None) -> MetricsMiddleware:
    """The ASGI application (FastAPI inside the access and metrics layers) serving `clf`."""
    settings = settings or ServeSettings()
    svc = PredictService(clf, settings, Metrics())
    app = FastAPI(title="resnetlab", version=__version__, lifespan=svc.lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None,
                  description=f"{clf.metadata.arch} image classifier ({len(clf.classes)} classes)")
    app.state.service = svc
    app.add_exception_handler(RequestError, request_error)
    for router in CAPABILITIES:
        app.include_router(router)
    if settings.docs:
        app.add_api_route("/docs", docs, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    # the routes metrics are labelled with: every capability's, and the app's own (/openapi.json, /docs)
    routes = [r for router in CAPABILITIES for r in router.routes] + [r for r in app.router.routes if isinstance(r, Route)]
    return MetricsMiddleware(AccessMiddleware(app, settings, svc.keys), svc.metrics, routes)
