"""The HTTP application (imports FastAPI, so it is loaded only to serve): the predict service (service.py) over the
models of a hub (hub.py), the routes of each capability (routes/), and the middleware around them all
(middleware.py). No request can name a file; model work is batched off the event loop; every bad input is a 4xx
with {"detail": reason}."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from .._version import __version__
from ..inference.classifier import ImageClassifier
from .hub import ModelHub
from .metrics import Metrics
from .middleware import AccessMiddleware, MetricsMiddleware
from .routes import CAPABILITIES
from .routes.page import docs
from .service import PredictService, RequestError
from .settings import ServeSettings


async def request_error(request: Request, e: RequestError) -> JSONResponse:
    return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)


def create_app(models: ImageClassifier | ModelHub, settings: ServeSettings | None = None) -> MetricsMiddleware:
    """The ASGI application (FastAPI inside the access and metrics layers) serving a classifier (a model of one
    version) or every model of a hub (made with the same metrics)."""
    settings = settings or ServeSettings()
    if isinstance(models, ImageClassifier):
        metrics = Metrics()
        hub = ModelHub.of_classifier(models, settings, metrics)
    else:
        hub, metrics = models, models.metrics
    svc = PredictService(hub, settings, metrics)
    names = sorted(hub.models)
    app = FastAPI(title="resnetlab", version=__version__, lifespan=svc.lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None,
                  description=f"image classifiers: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}")
    app.state.service = svc
    app.add_exception_handler(RequestError, request_error)
    for router in CAPABILITIES:
        app.include_router(router)
    if settings.docs:
        app.add_api_route("/docs", docs, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    # the routes metrics are labelled with: every capability's, and the app's own (/openapi.json, /docs)
    routes = [r for router in CAPABILITIES for r in router.routes] + [r for r in app.router.routes if isinstance(r, Route)]
    return MetricsMiddleware(AccessMiddleware(app, settings, svc.keys, svc.admin_keys), metrics, routes)
