"""The decoded cache: a source's images decoded once, in parallel, into a memory-mapped uint8 array on disk.

A cache is a folder `$RESNETLAB_CACHE/decoded/<name>-<key>/` (key: the source's identity and the
preprocessing policy) holding
- images.u8   (N, 3, S, S) uint8, C order, rows in a seeded shuffle of the source's order (so contiguous
              chunks are random samples: what sequential reads of a big cache need);
- labels.npy  (N,) int64; index.txt: the sample key of every row; meta.json (CacheMeta): format version,
              source, policy, classes, fingerprint, the files that could not be decoded.
It is reused while the source's fingerprint (paths, sizes, mtimes) matches and rebuilt, with one line
saying why, when it does not. A build writes into a hidden folder named by its process and becomes visible
by one rename, so a build killed at any point leaves nothing a later run would use; a later build removes
the leftovers. Builds of one cache are serialised by a lock file (DDP ranks, several runs at once).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_write_text, pid_alive
from ..decoding import ImageDecodeError, ResizePolicy, load_uint8
from .sources import Listing, Sample, read_bytes

FORMAT = 1
SHUFFLE_SEED = 0  # the row order is a function of the listing alone: every run sees the same rows


def cache_dir() -> Path:
    """$RESNETLAB_CACHE, else $XDG_CACHE_HOME/resnetlab, else ~/.cache/resnetlab."""
    env = os.environ.get("RESNETLAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resnetlab"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class CacheMeta:
    format: int
    kind: str
    source: str
    policy: dict
    classes: list[str]
    count: int
    fingerprint: str
    listed: int                                  # samples in the source; count = listed - bad
    bad: list[str] = field(default_factory=list)  # keys of files that could not be decoded (first 1000)
    bad_count: int = 0
    build_s: float = 0.0
    workers: int = 1
    created: float = 0.0

    @classmethod
    def read(cls, path: Path) -> "CacheMeta":
        d = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class DecodedCache:
    """An opened cache: images is a (N, 3, S, S) uint8 tensor over the memory map (pages are read from disk
    on first touch and belong to the page cache, not to the process's anonymous memory)."""
    path: Path
    meta: CacheMeta
    images: torch.Tensor
    labels: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def keys(self) -> list[str]:
        return (self.path / "index.txt").read_text().splitlines()


def cache_name(listing: Listing, policy: ResizePolicy) -> str:
    key = hashlib.sha256(json.dumps([FORMAT, listing.kind, listing.identity, policy.to_dict()]).encode())
    where = Path(listing.identity.rstrip("/"))
    name = f"{where.parent.name}-{where.name}" if where.name in ("train", "test", "val") else where.name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "source"
    return f"{slug}-{policy.input_size}px-{key.hexdigest()[:12]}"


def open_cache(listing: Listing, policy: ResizePolicy, workers: int = 0, strict: bool = False,
               progress: bool = True, log=print, root: Path | None = None) -> DecodedCache:
    """The cache of listing at policy: reused when its fingerprint matches, else (re)built."""
    base = (root or cache_dir()) / "decoded"
    name = cache_name(listing, policy)
    final = base / name
    if base.is_dir() and not os.access(base, os.W_OK):
        return _open_read_only(final, listing)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{base}: cannot create the cache folder ({e.strerror}); set RESNETLAB_CACHE to a "
                        f"writable folder") from None
    with _lock(base / f".{name}.lock"):
        why = stale_reason(final, listing)
        if why is None:
            return _open(final)
        if why != "new":
            log(f"cache {final.name}: {why}; rebuilding")
        _sweep(base, name)
        build(listing, policy, final, workers or default_workers(), strict, progress, log)
        return _open(final)


def _open_read_only(final: Path, listing: Listing) -> DecodedCache:
    """A cache folder nobody may write to (a read-only mount, a shared cache): no lock is needed, since nothing
    can build there; a complete, current cache is used as it is."""
    why = stale_reason(final, listing)
    if why is None:
        return _open(final)
    why = "it does not exist" if why == "new" else why
    raise UserError(f"{final}: cannot use this cache ({why}) and {final.parent} is read-only; build it where "
                    f"you can write (set RESNETLAB_CACHE to a writable folder)")


def stale_reason(final: Path, listing: Listing) -> str | None:
    """None when the cache at `final` is complete and matches the listing; else why not ("new" if absent)."""
    meta_file = final / "meta.json"
    if not meta_file.is_file():
        return "new"
    try:
        meta = CacheMeta.read(meta_file)
    except (ValueError, TypeError, OSError):
        return "its metadata is unreadable"
    if meta.format != FORMAT:
        return f"written by cache format {meta.format}, this version reads {FORMAT}"
    if meta.fingerprint == listing.fingerprint:
        return None
    if meta.listed != len(listing.samples):
        return f"the source now lists {len(listing.samples)} images, {meta.listed} when the cache was built"
    return "files of the source changed (size or modification time) since the cache was built"


def _open(final: Path) -> DecodedCache:
    meta = CacheMeta.read(final / "meta.json")
    s = meta.policy["input_size"]
    shape = (meta.count, 3, s, s)
    expected = int(np.prod(shape))
    if (final / "images.u8").stat().st_size != expected:
        raise UserError(f"{final}: images.u8 is not {expected} bytes; remove it with `resnetlab data rm "
                        f"{final.name}`")
    # 'c': copy-on-write; reads never copy, and nothing can write the file through this mapping
    mm = np.memmap(final / "images.u8", dtype=np.uint8, mode="c", shape=shape)
    labels = torch.from_numpy(np.load(final / "labels.npy"))
    _touch(final)
    return DecodedCache(final, meta, torch.from_numpy(mm), labels)


def _touch(final: Path) -> None:
    try:
        os.utime(final / "meta.json")  # `data ls` shows when a cache was last used
    except OSError:
        pass


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dead_builds(base: Path, name: str = "*") -> Iterator[tuple[str, Path]]:
    """(cache name, folder) of each build of `name` under `base` whose process is gone (a live build's folder is
    never among them: its process holds it)."""
    for d in sorted(base.glob(f".{name}.build-*")) if base.is_dir() else []:
        cache, _, pid = d.name[1:].rpartition(".build-")
        if d.is_dir() and not d.is_symlink() and pid.isdigit() and not pid_alive(int(pid)):
            yield cache, d


def _sweep(base: Path, name: str) -> None:
    """Remove what killed builds of this cache left behind."""
    for _, d in _dead_builds(base, name):
        shutil.rmtree(d, ignore_errors=True)




# ------------------------------------------------------------------------------------------- building
_worker: dict = {}


def _init_worker(path: str, shape: tuple[int, ...], mode: str, child: bool = True) -> None:
    if child:  # Ctrl-C is the parent's to handle: a worker ends with the pool, without a traceback of its own
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (not the parent's SIGTERM-as-Ctrl-C: the pool stops it)
    _worker["images"] = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    _worker["policy"] = ResizePolicy(shape[-1], mode)
    _worker["tars"] = {}


def _decode_chunk(task: list[tuple[int, Sample]]) -> list[tuple[int, str | None]]:
    """Decode rows into the shared file; (row, None) when written, (row, why) when the file is unreadable."""
    images, policy, tars = _worker["images"], _worker["policy"], _worker["tars"]
    out = []
    for row, sample in task:
        try:
            images[row] = load_uint8(read_bytes(sample, tars), policy)
            out.append((row, None))
        except (ImageDecodeError, OSError) as e:
            out.append((row, str(e) or type(e).__name__))
    return out


def build(listing: Listing, policy: ResizePolicy, final: Path, workers: int, strict: bool = False,
          progress: bool = True, log=print) -> None:
    n = len(listing.samples)
    s = policy.input_size
    tmp = final.parent / f".{final.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _check_space(final.parent, n * 3 * s * s)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SHUFFLE_SEED)).tolist()
        rows = [(r, listing.samples[i]) for r, i in enumerate(order)]
        shape = (n, 3, s, s)
        img_path = tmp / "images.u8"
        _reserve(img_path, n * 3 * s * s)
        t0 = time.perf_counter()
        failed = _decode_all(rows, str(img_path), shape, policy.mode, workers, strict, progress, n)
        keep = [r for r in range(n) if r not in failed]
        if not keep:
            raise UserError(f"{listing.identity}: none of its {n} images could be decoded "
                            f"(e.g. {rows[0][1].key}: {failed.get(0)})")
        if failed:
            _compact(img_path, keep, 3 * s * s)
            warnings.warn(f"skipped {len(failed)} unreadable image(s), e.g. {rows[min(failed)][1].key} "
                          f"({failed[min(failed)]}); listed in {final / 'meta.json'}", stacklevel=2)
        labels = np.array(listing.label_indices(), dtype=np.int64)[np.array(order)[keep]]
        np.save(tmp / "labels.npy", labels)
        (tmp / "index.txt").write_text("".join(rows[r][1].key + "\n" for r in keep))
        build_s = time.perf_counter() - t0
        bad = sorted(rows[r][1].key for r in failed)
        meta = CacheMeta(FORMAT, listing.kind, listing.identity, policy.to_dict(), listing.classes, len(keep),
                         listing.fingerprint, n, bad[:1000], len(bad), round(build_s, 2), workers, time.time())
        with open(img_path, "rb+") as f:
            os.fsync(f.fileno())
        atomic_write_text(tmp / "meta.json", json.dumps(dataclasses.asdict(meta), indent=1))
        if final.exists():  # stale: moved aside in one rename, then removed (open maps of it stay valid)
            trash = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        log(f"cache {final.name}: {len(keep)} images at {s}px decoded in {build_s:.1f}s "
            f"({n / max(build_s, 1e-9):.0f} img/s, {workers} worker{'s' if workers > 1 else ''}), "
            f"{len(keep) * 3 * s * s / 1e9:.2f} GB")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _check_space(where: Path, need: int) -> None:
    free = shutil.disk_usage(where).free
    if need > free:
        raise UserError(f"{where}: the decoded cache needs {_size(need)} and the disk has {_size(free)} free; set "
                        f"RESNETLAB_CACHE to a bigger disk or use a smaller --image-size")


def _reserve(path: Path, size: int) -> None:
    """Create the image file with all its blocks allocated now. Written through memory maps, a sparse file that
    meets a full disk (another build, another program) kills the writing process with SIGBUS; reserved, the
    build either has its space or stops here with one line."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            raise UserError(f"{path.parent.parent}: cannot reserve the {_size(size)} the decoded cache needs "
                            f"({e.strerror or e}); free some space or set RESNETLAB_CACHE to a bigger disk") from None


def _decode_all(rows: list[tuple[int, Sample]], path: str, shape: tuple[int, ...], mode: str, workers: int,
                strict: bool, progress: bool, n: int) -> dict[int, str]:
    chunk = max(1, min(256, n // (workers * 8) or 1))
    tasks = [rows[i:i + chunk] for i in range(0, n, chunk)]
    failed: dict[int, str] = {}
    bar = tqdm(total=n, desc="decoding", unit="img", disable=not progress, leave=False, file=sys.stderr)

    def collect(result: list[tuple[int, str | None]]) -> None:
        for row, why in result:
            if why is not None:
                if strict:
                    key = rows[row][1].key
                    raise UserError(f"{key}: cannot decode image ({why}); remove it or drop --strict")
                failed[row] = why
        bar.update(len(result))

    try:
        if workers == 1:
            _init_worker(path, shape, mode, child=False)
            for t in tasks:
                collect(_decode_chunk(t))
            _worker.clear()
        else:
            # concurrent.futures rather than multiprocessing.Pool: a worker that dies (killed, out of memory)
            # breaks the pool and ends the build, where Pool would wait for its task forever
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(path, shape, mode))
            try:
                for done in as_completed([pool.submit(_decode_chunk, t) for t in tasks]):
                    collect(done.result())
            except BrokenProcessPool:
                raise UserError(f"{Path(path).parent.parent}: a decoding worker died (killed, out of memory, or the "
                                f"disk failed); nothing was kept; run the build again") from None
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return failed


def _compact(path: Path, keep: list[int], row_bytes: int) -> None:
    """Move the kept rows to the front of the file in place (in order) and cut the rest."""
    mm = np.memmap(path, dtype=np.uint8, mode="r+")
    rows = mm.reshape(-1, row_bytes)
    for dst, src in enumerate(keep):
        if dst != src:
            rows[dst] = rows[src]
    mm.flush()
    del rows, mm
    with open(path, "rb+") as f:
        f.truncate(len(keep) * row_bytes)


# ------------------------------------------------------------------------------------------ managing
@dataclass
class CacheInfo:
    name: str
    source: str
    kind: str
    count: int
    size: int
    bytes: int
    built: float
    used: float


@dataclass
class Leftover:
    """What a killed build left: its hidden folder (its process is gone, so nothing will use or finish it)."""
    name: str        # the cache it was building
    path: Path
    bytes: int


def leftovers(root: Path | None = None) -> list[Leftover]:
    """What killed builds left, with the disk each holds."""
    return [Leftover(name, d, sum(f.stat().st_size for f in d.iterdir() if f.is_file() and not f.is_symlink()))
            for name, d in _dead_builds((root or cache_dir()) / "decoded")]


def list_caches(root: Path | None = None) -> list[CacheInfo]:
    base = (root or cache_dir()) / "decoded"
    out = []
    for d in sorted(base.glob("*")) if base.is_dir() else []:
        if d.name.startswith(".") or not (d / "meta.json").is_file():
            continue
        try:
            m = CacheMeta.read(d / "meta.json")
        except (ValueError, TypeError, OSError):
            continue
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        out.append(CacheInfo(d.name, m.source, m.kind, m.count, m.policy.get("input_size", 0), size, m.created,
                             (d / "meta.json").stat().st_mtime))
    return out


def remove_caches(names: list[str], everything: bool = False, root: Path | None = None) -> list[str]:
    """Remove caches by name (or a source path they were built from; everything: all, and every leftover of a
    killed build); returns what was removed."""
    caches, left = list_caches(root), leftovers(root)
    if everything:
        chosen, stale = caches, left
    else:
        chosen, stale = [], []
        for n in names:
            hit = [c for c in caches if c.name == n or c.source == n or
                   (Path(n).exists() and c.source == str(Path(n).resolve()))]
            hit_left = [x for x in left if x.name == n or x.path.name == n or any(c.name == x.name for c in hit)]
            if not hit and not hit_left:
                raise UserError(f"{n}: no such cache (see `resnetlab data ls`)")
            chosen += [c for c in hit if c not in chosen]
            stale += [x for x in hit_left if x not in stale]
    base = (root or cache_dir()) / "decoded"
    removed = []
    for c in chosen:
        path = base / c.name
        with _lock(base / f".{c.name}.lock"):
            if path.is_symlink():  # a link to a cache elsewhere: the link goes, never what it points to
                target = os.readlink(path)
                path.unlink()
                removed.append(f"{c.name} (a link; {target} itself is kept)")
            else:
                shutil.rmtree(path)
                removed.append(c.name)
        (base / f".{c.name}.lock").unlink(missing_ok=True)
    for x in stale:
        shutil.rmtree(x.path, ignore_errors=True)
    return removed + [f"{x.path.name} (left by a killed build)" for x in stale]
