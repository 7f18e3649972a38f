"""The models a service answers with, and how versions come and go (no HTTP here).

Each model serves the highest version on disk that loads and passes its check, plus any version loaded by name
(the management API) or pinned as its default. A new version is opened, checked and warmed up beside the one
serving; only then does it take the model's traffic, in one assignment on the event loop. A request holds the
version it started on until it is answered, so a swap never moves or drops it; the version replaced is released
(its batcher stopped, its weights freed, the C heap trimmed) after its last request. A version that fails to open
or to pass its check leaves what serves untouched; the reason is logged in one line, kept for the management API,
and not retried until its file changes.

Models take turns on the cores: every version has its own batcher (its own batch size, wait and in-flight limit),
and a batch computes only while holding `turn`, a FIFO lock, so a model flooded with requests computes one batch,
then waits behind the other models' batches already waiting: each keeps its share however hard the other is hit.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import UserError
from ..inference.classifier import ImageClassifier
from .batcher import DynamicBatcher
from .metrics import Metrics
from .repository import (ModelConfig, Repository, SingleCheckpoint, VersionFiles, model_name_problem,
                         name_for_checkpoint, parse_version)
from .settings import ServeSettings


class RequestError(Exception):
    """A client error with its HTTP status; becomes {"detail": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def open_classifier_file(files: VersionFiles, device: str) -> ImageClassifier:
    """The classifier of a version's checkpoint (its suffix picks the backend)."""
    from ..inference.predict import load
    if files.path is None:
        raise UserError(files.problem or "no checkpoint")
    return load(files.path, device=device, backend="onnx" if files.path.suffix == ".onnx" else "torch")


def probe_batch(size: int) -> torch.Tensor:
    """Two images a classifier must answer with finite logits: a blank one and fixed noise."""
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.zeros(3, size, size, dtype=torch.uint8),
                        torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)])


def output_problem(logits: torch.Tensor, classes: int) -> str | None:
    """What is wrong with a probe's logits (None: nothing)."""
    if logits.ndim != 2 or logits.shape != (2, classes):
        return f"the model answers with shape {tuple(logits.shape)} where its {classes} classes need (2, {classes})"
    if not torch.isfinite(logits).all():
        return "the model's outputs are not finite (NaN or inf) on a blank and a noise image: its weights are broken"
    return None


def classes_problem(new: list[str], old: list[str], old_version: int) -> str | None:
    """A model's versions answer with one set of classes: clients read them by name."""
    if new == old:
        return None
    if len(new) != len(old):
        what = f"{len(new)} classes where version {old_version} has {len(old)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(new, old)) if a != b)
        what = f"class {i} is {new[i]!r} where version {old_version} has {old[i]!r}"
    return f"{what}; a model's versions must share their classes (serve it under a new model name)"


@dataclass(eq=False)
class ServedVersion:
    """One loaded version: its classifier, its batcher, and who is using it."""
    name: str
    version: int
    files: VersionFiles
    clf: ImageClassifier | None
    config: ModelConfig
    batcher: DynamicBatcher | None = None
    in_flight: int = 0
    retired: bool = False
    closed: bool = False
    loaded_at: float = field(default_factory=time.time)
    load_s: float = 0.0

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.clf.logits(batch)


@dataclass
class Failure:
    """Why a version did not load, for the files it had then (a poll retries once they change)."""
    stamp: tuple
    reason: str
    at: float = field(default_factory=time.time)


@dataclass(eq=False)
class ServedModel:
    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    requested: set[int] = field(default_factory=set)  # loaded by name (management API): kept until unloaded
    held_back: set[int] = field(default_factory=set)  # unloaded by name: not loaded again as the latest
    off: bool = False                                 # every version unloaded by hand: nothing loads until a load
    pinned: int | None = None                         # the default version set by the management API
    failures: dict[int, Failure] = field(default_factory=dict)
    config_problem: str | None = None
    in_flight: int = 0

    @property
    def default_version(self) -> ServedVersion | None:
        pin = self.pinned or self.config.default_version
        if pin in self.versions:
            return self.versions[pin]
        return self.versions[max(self.versions)] if self.versions else None


class ModelHub:
    """Every model a service answers with, from one repository."""

    def __init__(self, repository: Repository, settings: ServeSettings, metrics: Metrics, device: str = "cpu",
                 log: Callable[[str], None] = print) -> None:
        self.repository, self.settings, self.metrics, self.device, self.log = (repository, settings, metrics,
                                                                               device, log)
        self.models: dict[str, ServedModel] = {}
        self.default_model: str | None = settings.default_model
        self.started = False
        self.turn: asyncio.Lock | None = None      # held by a batch while it computes (fair across models)
        self.changes: asyncio.Lock | None = None   # one load, unload or scan at a time
        self._closing: set[asyncio.Task] = set()
        self.warm_shapes: set[tuple] = set()  # (model kind, pass size) already run in this process

    @classmethod
    def of_classifier(cls, clf: ImageClassifier, settings: ServeSettings, metrics: Metrics,
                      log: Callable[[str], None] = print) -> "ModelHub":
        """A hub of one: the classifier given, as version 1 of a model named after its checkpoint (reloading
        reads that file again)."""
        repo = SingleCheckpoint(clf.path, name_for_checkpoint(clf.path))
        hub = cls(repo, settings, metrics, device=str(getattr(clf, "device", "cpu")), log=log)
        model = hub.models[repo.name] = ServedModel(repo.name)
        hub._check(model, 1, clf)
        model.versions[1] = ServedVersion(repo.name, 1, repo.scan()[repo.name][1], clf, model.config)
        hub.default_model = repo.name
        return hub

    # --- before the event loop: open what will serve, so a broken start is one line, not a server -----------
    def preload(self) -> None:
        """Open and check every version that should serve (in this thread, before the server starts); one line
        when nothing can serve."""
        on_disk = self.repository.scan()
        for name, versions in on_disk.items():
            model = self.models.setdefault(name, ServedModel(name))
            self._read_config(model)
            for v in self._candidates(model, versions):
                try:
                    clf = open_classifier_file(versions[v], self.device)
                    self._check(model, v, clf)
                except Exception as e:  # whatever a broken file raises: one line, and the next version is tried
                    self._failed(model, v, versions[v], str(e).splitlines()[0] if str(e) else type(e).__name__)
                    continue
                model.versions[v] = ServedVersion(name, v, versions[v], clf, model.config)
                break  # the latest that opens; versions loaded by name come later, by hand
        if not any(m.versions for m in self.models.values()):
            reasons = [f"{m.name} version {v}: {f.reason}" for m in self.models.values() for v, f in m.failures.items()]
            raise UserError(f"{self.repository.describe()}: no model can be served"
                            f"{' (' + '; '.join(reasons[:3]) + ')' if reasons else ' (no <name>/<version>/ folder with a checkpoint)'}")
        if self.default_model is None:
            self.default_model = next(n for n, m in sorted(self.models.items()) if m.versions)
        elif self.default_model not in self.models:
            raise UserError(f"serve: --default-model {self.default_model!r} is not in {self.repository.describe()} "
                            f"(models: {', '.join(sorted(self.models))})")

    # --- on the event loop ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start and warm up the preloaded versions; then the service is ready."""
        self.turn, self.changes = asyncio.Lock(), asyncio.Lock()
        for model in self.models.values():
            for sv in list(model.versions.values()):
                await self._start_version(sv)
                await self._warm_up(sv)
                self._now_serving(sv)
        self.started = True

    async def stop(self) -> None:
        self.started = False
        for model in self.models.values():
            for sv in list(model.versions.values()):
                if sv.batcher is not None:
                    await sv.batcher.stop()  # requests already queued are answered first
        for task in list(self._closing):
            await task

    @property
    def ready(self) -> bool:
        return self.started and any(m.versions for m in self.models.values())

    async def poll_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sync()
            except UserError as e:  # the repository folder went away or became unreadable: keep serving
                self.log(f"model repository not scanned: {e}")

    async def sync(self) -> None:
        """Bring the models in line with the repository now: load new and changed versions, release the ones no
        longer wanted or no longer on disk."""
        async with self.changes:
            on_disk = self.repository.scan()
            for name in sorted(set(on_disk) | set(self.models)):
                await self._reconcile(name, on_disk.get(name, {}))

    async def load(self, name: str, version: int | None = None) -> ServedVersion:
        """Load a model's latest version, or a given one (kept until unloaded). RequestError when it cannot be."""
        async with self.changes:
            on_disk = self.repository.scan()
            if name not in on_disk:
                raise RequestError(404, f"no model {name!r} in the repository {self.repository.describe()}")
            model = self.models.setdefault(name, ServedModel(name))
            model.off = False
            if version is not None:
                if version not in on_disk[name]:
                    raise RequestError(404, f"model {name!r} has no version {version} on disk "
                                            f"(versions: {', '.join(map(str, on_disk[name])) or 'none'})")
                model.requested.add(version)
                model.held_back.discard(version)
                model.failures.pop(version, None)  # asked by name: try again even if its files did not change
            else:
                model.held_back.clear()  # failures stay: a version is retried once its files change
            await self._reconcile(name, on_disk[name])
            want = version if version is not None else max(on_disk[name], default=None)
            if want in model.versions and model.versions[want].files.stamp == on_disk[name][want].stamp:
                return model.versions[want]
            failure = model.failures.get(want)
            serving = model.default_version
            keeps = f"; version {serving.version} keeps serving" if serving else ""
            raise RequestError(422, f"model {name!r} version {want} not loaded: "
                                    f"{failure.reason if failure else model.config_problem or 'unknown'}{keeps}")

    async def unload(self, name: str, version: int | None = None) -> list[int]:
        """Stop serving a version (or every version) of a model; what was released."""
        async with self.changes:
            model = self.model(name)
            if version is None:
                gone = list(model.versions)
                model.off, model.requested, model.pinned = True, set(), None
            else:
                if version not in model.versions:
                    raise RequestError(404, f"model {name!r} has no version {version} loaded "
                                            f"(loaded: {', '.join(map(str, model.versions)) or 'none'})")
                gone = [version]
                model.requested.discard(version)
                model.held_back.add(version)
                if model.pinned == version:
                    model.pinned = None
            for v in gone:
                self._retire(model, v)
            return gone

    def set_default(self, name: str, version: int | None) -> ServedVersion:
        """Pin the version a model answers with (None: back to its highest loaded)."""
        model = self.model(name)
        if version is not None and version not in model.versions:
            raise RequestError(409, f"model {name!r} version {version} is not loaded; load it first "
                                    f"(loaded: {', '.join(map(str, model.versions)) or 'none'})")
        model.pinned = version
        if version is not None:
            model.requested.add(version)
        current = model.default_version
        if current is None:
            raise RequestError(503, f"model {name!r} has no version loaded")
        return current

    # --- answering requests ---------------------------------------------------------------------------------
    def model(self, name: str) -> ServedModel:
        problem = model_name_problem(name)
        if problem:
            raise RequestError(404, problem)
        model = self.models.get(name)
        if model is None:
            raise RequestError(404, f"no model {name!r} is served here (models: {', '.join(sorted(self.models))})")
        return model

    def resolve(self, name: str | None = None, version: str | None = None) -> ServedVersion:
        """The version a request is answered with: a model's given version, its default, or the service's
        default model's default version."""
        if not self.started:
            raise RequestError(503, "models are still loading; retry shortly (see /readyz)", {"Retry-After": "1"})
        model = self.model(name if name is not None else self.default_model)
        if version is None:
            sv = model.default_version
            if sv is None:
                raise RequestError(503, f"model {model.name!r} has no version loaded"
                                        f"{' (unloaded by the management API)' if model.off else ''}")
            return sv
        v = parse_version(version)
        if v is None or v not in model.versions:
            raise RequestError(404, f"model {model.name!r} has no version {version[:20]!r} loaded (loaded: "
                                    f"{', '.join(map(str, model.versions)) or 'none'})")
        return model.versions[v]

    @contextmanager
    def hold(self, sv: ServedVersion) -> Iterator[ServedVersion]:
        """Use a version for one request: it is not released while held. Refuses past the model's in-flight
        limit (503: the model is busy, the others are not)."""
        model = self.models[sv.name]  # resolved just now, on this event loop: the model is there
        limit = sv.config.max_in_flight or self.settings.max_in_flight
        if model.in_flight >= limit:
            raise RequestError(503, f"model {sv.name!r} is busy ({model.in_flight} requests in flight, its limit); "
                                    f"retry shortly", {"Retry-After": "1"})
        model.in_flight += 1
        sv.in_flight += 1
        try:
            yield sv
        finally:
            sv.in_flight -= 1
            model.in_flight -= 1
            if sv.retired:
                self._release_when_idle(sv)

    # --- loading and releasing ------------------------------------------------------------------------------
    def _candidates(self, model: ServedModel, versions: dict[int, VersionFiles]) -> list[int]:
        """Versions to try as the model's latest, best first: its pinned default, then the highest down;
        without those that failed with the files they still have, or were unloaded by hand."""
        if model.off:
            return []
        pin = model.pinned or model.config.default_version
        order = ([pin] if pin in versions else []) + sorted((v for v in versions if v != pin), reverse=True)
        return [v for v in order if v not in model.held_back
                and not (v in model.failures and model.failures[v].stamp == versions[v].stamp)]

    def _read_config(self, model: ServedModel) -> None:
        try:
            model.config, model.config_problem = self.repository.config(model.name), None
        except UserError as e:  # keep the settings last read; say why
            if model.config_problem != str(e):
                self.log(f"model {model.name}: config not read: {e}")
            model.config_problem = str(e)

    async def _reconcile(self, name: str, on_disk: dict[int, VersionFiles]) -> None:
        model = self.models.setdefault(name, ServedModel(name))
        self._read_config(model)
        keep: set[int] = set()
        for v in self._candidates(model, on_disk):  # the latest that loads
            if await self._ensure(model, v, on_disk[v]):
                keep.add(v)
                break
        for v in sorted(model.requested & set(on_disk)):  # loaded by name, pinned
            if v in keep or await self._ensure(model, v, on_disk[v]):
                keep.add(v)
            else:
                model.requested.discard(v)  # a version asked for by name that cannot serve is not kept asking
        for v in list(model.versions):
            if v not in keep:
                self._retire(model, v)
        if not model.versions and not on_disk:
            del self.models[name]  # its folder is gone

    async def _ensure(self, model: ServedModel, v: int, files: VersionFiles) -> bool:
        current = model.versions.get(v)
        if current is not None and current.files.stamp == files.stamp:
            return True
        if v in model.failures and model.failures[v].stamp == files.stamp:
            return False
        return await self._load_version(model, v, files)

    def _check(self, model: ServedModel, v: int, clf: ImageClassifier) -> None:
        """The self-check of a version before it takes traffic: finite logits of the right width on a probe,
        and the classes of the model's other versions."""
        problem = output_problem(clf.logits(probe_batch(clf.policy.input_size)), len(clf.classes))
        others = [sv for sv in model.versions.values() if sv.version != v]
        if problem is None and others:
            ref = others[-1]
            problem = classes_problem(clf.classes, ref.clf.classes, ref.version)
        if problem:
            raise UserError(f"self-check failed: {problem}")

    async def _load_version(self, model: ServedModel, v: int, files: VersionFiles) -> bool:
        """Open, check and warm up a version beside what serves, then swap it in; False (and the reason kept
        and logged) when it cannot serve."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        sv = None
        try:
            clf = await loop.run_in_executor(None, open_classifier_file, files, self.device)
            sv = ServedVersion(model.name, v, files, clf, model.config)
            async with self.turn:  # the check's forward takes its turn like any batch
                await loop.run_in_executor(None, self._check, model, v, clf)
            await self._start_version(sv)
            await self._warm_up(sv)
        except Exception as e:  # whatever a broken file raises, the versions serving go on
            if sv is not None and sv.batcher is not None:
                await sv.batcher.stop()
            self._failed(model, v, files, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return False
        sv.load_s = time.perf_counter() - t0
        old = model.versions.get(v)
        model.versions[v] = sv  # the swap: requests resolved from now on get this version
        model.failures.pop(v, None)
        self._now_serving(sv)
        self.log(f"model {model.name} version {v}: serving {files.path.name} (opened, checked and warmed up in "
                 f"{sv.load_s:.1f} s)")
        if old is not None:  # same version number, new files: the old object goes after its last request
            self._release_when_idle(old)
        return True

    def _now_serving(self, sv: ServedVersion) -> None:
        self.metrics.version_loaded(sv.name, sv.version, True)
        self.metrics.serving(sv.name, sv.version, True)

    def _failed(self, model: ServedModel, v: int, files: VersionFiles, reason: str) -> None:
        model.failures[v] = Failure(files.stamp, reason)
        self.metrics.version_loaded(model.name, v, False)
        serving = model.default_version
        self.log(f"model {model.name} version {v} not loaded: {reason}"
                 f"{f'; version {serving.version} keeps serving' if serving else ''}")

    async def _start_version(self, sv: ServedVersion) -> None:
        s = self.settings
        max_batch = sv.config.max_batch or s.max_batch
        name, v = sv.name, str(sv.version)
        sv.batcher = DynamicBatcher(sv.run, max_batch,
                                    sv.config.max_wait_ms if sv.config.max_wait_ms is not None else s.max_wait_ms,
                                    on_batch=lambda n: self.metrics.batch_done(name, v, n),
                                    on_queue=lambda sec: self.metrics.queued(name, v, sec),
                                    sizes=s.pass_sizes_for(max_batch), turn=self.turn)
        await sv.batcher.start()

    async def _warm_up(self, sv: ServedVersion) -> None:
        """Each pass size once, where it is cold: a first call at a shape pays for kernel choice and allocation
        (oneDNN's primitive cache is per process and keyed by shapes, not weights), so a new version of an
        architecture this process already ran needs no warm-up, and gets none: warming every pass size again held
        the cores for 0.45 s per swap and tripled the p99 of requests meanwhile (docs/results/serving.md). ONNX
        Runtime sessions keep their own kernels: each new one is warmed. Each pass takes its turn."""
        clf = sv.clf
        m = clf.metadata
        key = (clf.backend, m.arch, json.dumps(m.kwargs, sort_keys=True), clf.input_size, self.device,
               sv.files.stamp if clf.backend != "torch" else None)
        s = clf.policy.input_size
        loop = asyncio.get_running_loop()
        for n in self.settings.warm_up_sizes_for(sv.batcher.max_batch):
            if (key, n) in self.warm_shapes:
                continue
            async with self.turn:
                await loop.run_in_executor(None, sv.run, torch.zeros(n, 3, s, s, dtype=torch.uint8))
            self.warm_shapes.add((key, n))

    def _retire(self, model: ServedModel, v: int) -> None:
        sv = model.versions.pop(v)
        self.metrics.serving(model.name, v, False)
        self._release_when_idle(sv)

    def _release_when_idle(self, sv: ServedVersion) -> None:
        """A version no longer resolved: released now if no request holds it, else after the last one (hold)."""
        sv.retired = True
        if sv.in_flight or sv.closed:
            return
        sv.closed = True
        task = asyncio.get_running_loop().create_task(self._close(sv))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, sv: ServedVersion) -> None:
        """Release a retired version after its last request: stop its batcher and drop its classifier, which
        frees the model at once (it holds no reference cycle: no gc.collect, which held the event loop ~0.1 s). The
        C heap's free pages go back to the system at the service's next quiet spell (PredictService's trim: a
        trim under load stalls every allocating thread)."""
        if sv.batcher is not None:
            await sv.batcher.stop()
        sv.batcher, sv.clf = None, None
        self.log(f"model {sv.name} version {sv.version}: released")

    # --- what the listing and management API show -----------------------------------------------------------
    def describe(self) -> list[dict]:
        on_disk = self.repository.scan()
        out = []
        for name in sorted(set(on_disk) | set(self.models)):
            model = self.models.get(name) or ServedModel(name)
            default = model.default_version
            versions = []
            for v in sorted(set(on_disk.get(name, {})) | set(model.versions) | set(model.failures)):
                sv = model.versions.get(v)
                failure = model.failures.get(v)
                files = on_disk.get(name, {}).get(v)
                state = ("serving" if sv is not None else "failed" if failure is not None else
                         "unloaded" if v in model.held_back or model.off else
                         "not a version" if files is not None and files.problem else "on disk")
                entry = {"version": v, "state": state}
                if sv is not None:
                    entry.update(file=sv.files.path.name, backend=sv.clf.backend if sv.clf else None,
                                 loaded_at=round(sv.loaded_at, 3), load_s=round(sv.load_s, 3), in_flight=sv.in_flight)
                if failure is not None:
                    entry.update(reason=failure.reason, failed_at=round(failure.at, 3))
                elif files is not None and files.problem and sv is None:
                    entry["reason"] = files.problem
                versions.append(entry)
            out.append({"name": name, "default": name == self.default_model,
                        "default_version": default.version if default else None, "pinned": model.pinned,
                        "in_flight": model.in_flight, "config_problem": model.config_problem, "versions": versions})
        return out
