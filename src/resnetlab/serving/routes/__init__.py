"""The service's routes, one router per capability. A new capability (streams, detection) is one more module
here with its router, added to CAPABILITIES; metrics label its routes from the router itself."""
from __future__ import annotations

from . import admin, card, explain, health, page, predict

CAPABILITIES = (page.router, health.router, card.router, predict.router, explain.router, admin.router)
