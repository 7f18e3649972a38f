"""`resnetlab tune --recipe R --space SPACE.yaml --trials N`: hyperparameter search on Optuna."""
from __future__ import annotations

import argparse

from .common import add_overrides


def add_parser(sub) -> None:
    s = sub.add_parser("tune", help="search hyperparameters (Optuna) on the validation split")
    s.add_argument("--recipe", default="cifar10_quick", help="a bundled recipe name (resnetlab recipes) or a YAML file (default: cifar10_quick)")
    s.add_argument("--space", required=True, help="YAML: recipe key → {low, high[, log][, type]} or {choices}")
    s.add_argument("--trials", type=int, required=True, help="trials to run in this process")
    s.add_argument("--timeout", type=float, default=None, metavar="MIN", help="stop starting trials after MIN minutes")
    s.add_argument("--study", default=None, help="study name (default: <recipe name>-<space file name>)")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///<study folder>/study.db); e.g. "
                        "postgresql://user:pw@host/db for several machines")
    s.add_argument("--out", default="runs/tune", help="folder that holds the study folder")
    s.add_argument("--weights", default=None, help="fine-tune these weights in each trial (finetune recipes)")
    s.add_argument("--data-dir", default=None, help="CIFAR data root (default: $RESNETLAB_DATA, else ./data)")
    s.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                   help="stop bad trials after an epoch: median (Optuna's MedianPruner) or successive halving")
    s.add_argument("--seed", type=int, default=None, help="sampler seed (TPE)")
    add_overrides(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..tune import tune
    tune(args.recipe, args.space, args.trials, args.study, args.storage, args.timeout, args.out, args.weights,
         args.data_dir, list(args.overrides), args.pruner, args.seed)
