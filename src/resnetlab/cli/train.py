"""`resnetlab train`: a recipe (plus overrides) → a finished run folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..training.config import load_recipe
from ..training.rundir import next_run_dir
from ..training.runner import train_recipe
from .common import add_data_flags, add_overrides, flag_overrides


def add_parser(sub) -> None:
    s = sub.add_parser("train", help="train a recipe")
    s.add_argument("--recipe", default="recipes/cifar10_quick.yaml")
    s.add_argument("--data-dir", default=None, help="data root (default: $RESNETLAB_DATA, else ./data)")
    s.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    s.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue an interrupted run exactly")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    add_data_flags(s)
    add_overrides(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    overrides = list(args.overrides) + flag_overrides(args)
    if args.resume:
        # the run's own recipe and data root; --device, --data-dir, --no-verify and safe key=value apply
        out = Path(args.resume)
        recipe = None
    else:
        recipe = load_recipe(args.recipe, overrides)
        out = Path(args.out) if args.out else next_run_dir(Path("runs") / recipe.name)
    train_recipe(recipe, out, args.data_dir, resume=bool(args.resume), progress=not args.no_progress,
                 overrides=overrides if args.resume else ())
    print(f"run folder: {out}")
