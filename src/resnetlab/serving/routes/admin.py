"""The management API (needs an admin key, never a user key): the repository's models and versions with their
state and why a version did not load; load, unload and pin versions (Triton's EXPLICIT mode). Under
--reload poll the folder decides what is loaded: load and unload are refused, pinning is allowed."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from ..repository import parse_version
from ..service import PredictService, RequestError, current_service

router = APIRouter()


def _version(text: str | None, allow_latest: bool = False) -> int | None:
    if text is None or (allow_latest and text == "latest"):
        return None
    v = parse_version(text)
    if v is None:
        raise RequestError(400, f"version must be a positive integer{' or latest' if allow_latest else ''}, got "
                                f"{text[:20]!r}")
    return v


def _explicit(svc: PredictService) -> None:
    if svc.settings.reload == "poll":
        raise RequestError(409, "the repository is polled (--reload poll): add or remove version folders instead")


@router.get("/admin/models", summary="Every model and version in the repository, with its state")
async def repository(svc: PredictService = Depends(current_service)) -> dict:
    return {"repository": svc.hub.repository.describe(), "reload": svc.settings.reload,
            "default_model": svc.hub.default_model, "models": svc.hub.describe()}


@router.post("/admin/models/{name}/load", summary="Load a model's latest version, or a given one",
             description="The version is opened, checked and warmed up beside what serves, then takes the traffic; "
                         "422 with the reason when it cannot serve (what served goes on serving).")
async def load(name: str, version: str | None = None, svc: PredictService = Depends(current_service)) -> dict:
    _explicit(svc)
    sv = await svc.hub.load(name, _version(version))
    return {"model": sv.name, "version": sv.version, "state": "serving", "load_s": round(sv.load_s, 3)}


@router.post("/admin/models/{name}/unload", summary="Stop serving a version of a model (or all of them)",
             description="Requests in flight finish on it; it is released after the last one.")
async def unload(name: str, version: str | None = None, svc: PredictService = Depends(current_service)) -> dict:
    _explicit(svc)
    gone = await svc.hub.unload(name, _version(version))
    return {"model": name, "unloaded": gone}


@router.post("/admin/models/{name}/default", summary="Pin the version a model answers with",
             description="version=N pins a loaded version; version=latest (or none) answers with the highest "
                         "loaded again.")
async def set_default(name: str, version: str | None = None, svc: PredictService = Depends(current_service)) -> dict:
    sv = svc.hub.set_default(name, _version(version, allow_latest=True))
    return {"model": name, "default_version": sv.version, "pinned": svc.hub.models[name].pinned}
