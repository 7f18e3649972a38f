"""`resnetlab train`: a recipe (plus overrides) → a finished run folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_flags, add_overrides, flag_overrides


def add_parser(sub) -> None:
    s = sub.add_parser("train", help="train a recipe")
    s.add_argument("--recipe", default="cifar10_quick", help="a bundled recipe name (resnetlab recipes) or a YAML file (default: cifar10_quick)")
    s.add_argument("--data-dir", default=None, help="data root (default: $RESNETLAB_DATA, else ./data)")
    s.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    s.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue an interrupted run exactly")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    s.add_argument("--nproc", type=int, default=0,
                   help="run N processes on this machine under torchrun (distributed data parallel)")
    add_data_flags(s)
    add_overrides(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..training.config import load_recipe
    from ..training.runner import train_recipe
    if args.nproc:
        launch_torchrun(args.nproc, args.argv)
        return
    overrides = list(args.overrides) + flag_overrides(args)
    if args.resume:
        # the run's own recipe and data root; --device, --data-dir, --no-verify and safe key=value apply
        out: Path | None = Path(args.resume)
        recipe = None
    else:
        recipe = load_recipe(args.recipe, overrides)
        out = Path(args.out) if args.out else None  # default chosen by rank 0: runs/<name>[-N]
    train_recipe(recipe, out, args.data_dir, resume=bool(args.resume), progress=not args.no_progress,
                 overrides=overrides if args.resume else ())


def launch_torchrun(nproc: int, argv: list[str]) -> None:
    """`--nproc N`: the same command under torchrun (standalone, this machine), for convenience;
    `torchrun --nproc_per_node N -m resnetlab train ...` works as well."""
    import subprocess
    import sys

    from ..errors import UserError
    from ..runtime import launched_distributed
    if launched_distributed():
        raise UserError("--nproc is for launching; this process is already part of a torchrun job")
    if nproc < 1:
        raise UserError(f"--nproc must be positive, got {nproc}")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "resnetlab", *rest]
    rc = subprocess.call(cmd)
    if rc:
        raise SystemExit(rc)
