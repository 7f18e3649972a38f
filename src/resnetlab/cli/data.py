"""`resnetlab data cache SOURCE --image-size S | ls | rm NAME...`: the decoded caches of users' image sources."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> None:
    s = sub.add_parser("data", help="decoded caches of image folders, manifests and shards (cache, ls, rm)")
    sub2 = s.add_subparsers(dest="action", required=True)
    c = sub2.add_parser("cache", help="decode a source into its cache ahead of training (reused when current)")
    c.add_argument("source", help="an image folder, a .csv/.jsonl manifest, or .tar shards (folder, file, "
                                  "brace pattern or http(s) URL pattern)")
    c.add_argument("--image-size", type=int, required=True, help="side the images are decoded to (the net's input)")
    c.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    c.add_argument("--strict", action="store_true", help="fail on the first unreadable file")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_cache)
    ls = sub2.add_parser("ls", help="the caches: name, images, size, source, age")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    ls.set_defaults(func=run_ls)
    rm = sub2.add_parser("rm", help="remove caches by name or by the source they were built from")
    rm.add_argument("names", nargs="*", help="cache names (from `data ls`) or source paths")
    rm.add_argument("--all", action="store_true", help="remove every cache")
    rm.set_defaults(func=run_rm)


def run_cache(args: argparse.Namespace) -> None:
    from ..data.folders import cached_set
    from ..data.sources import source_kind
    if not 8 <= args.image_size <= 4096:
        raise UserError(f"--image-size must be in [8, 4096], got {args.image_size}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    sources = [args.source]
    root = Path(args.source)
    if source_kind(args.source) == "folder" and (root / "train").is_dir():
        test = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        if test is not None:
            sources = [str(root / "train"), str(test)]
    for src in sources:
        ds, cache = cached_set(src, args.image_size, strict=args.strict, progress=not args.no_progress,
                               workers=args.workers)
        print(f"{cache.path}  {len(ds)} images, {len(ds.classes)} classes, {cache.nbytes / 1e9:.2f} GB")


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit}"
    return f"{s:.0f} s"


def run_ls(args: argparse.Namespace) -> None:
    from ..data.cache import cache_dir, leftovers, list_caches
    caches, left = list_caches(), leftovers()
    if args.json:
        print(json.dumps([c.__dict__ for c in caches] + [{"name": x.path.name, "leftover_of": x.name,
                                                          "bytes": x.bytes} for x in left], indent=2))
        return
    for x in left:
        print(f"{x.path.name}: {x.bytes / 1e9:.2f} GB left by a killed build of {x.name}; `resnetlab data rm "
              f"{x.name}` (or --all) removes it")
    if not caches:
        print(f"no decoded caches in {cache_dir() / 'decoded'}")
        return
    print(f"{'name':<58}{'images':>9}{'size':>10}{'built':>9}{'used':>9}  source")
    for c in caches:
        print(f"{c.name:<58}{c.count:>9}{c.bytes / 1e9:>8.2f}GB{_age(c.built):>9}{_age(c.used):>9}  {c.source}")
    print(f"{len(caches)} cache(s), {sum(c.bytes for c in caches) / 1e9:.2f} GB in {cache_dir() / 'decoded'}")


def run_rm(args: argparse.Namespace) -> None:
    from ..data.cache import remove_caches
    if not args.names and not args.all:
        raise UserError("data rm: name the caches to remove (see `resnetlab data ls`), or give --all")
    for name in remove_caches(args.names, everything=args.all):
        print(f"removed {name}")
