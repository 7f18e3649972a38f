"""`resnetlab finetune --weights W --data D`: pretrained weights → a fine-tuned run folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_flags, add_overrides, bundled_value, flag_overrides

DEFAULT_RECIPE = "finetune_cifar100_subset"
STRATEGIES = ("linear-probe", "partial", "full", "two-stage")  # finetune.strategy's choices (a test keeps them equal)


def add_parser(sub) -> None:
    s = sub.add_parser("finetune", help="fine-tune pretrained weights on new data")
    s.add_argument("--weights", help="the pretrained weights: a resnetlab .safetensors or run folder (its final "
                   "checkpoint), a torchvision .pth state_dict, or torchvision:NAME (required unless --resume)")
    s.add_argument("--data", help="image folder, .csv/.jsonl manifest, .tar shards, or cifar10 / cifar100 "
                   "(required unless --resume)")
    s.add_argument("--resume", metavar="RUN", default=None,
                   help="continue an interrupted fine-tuning run folder exactly (its recipe, weights and data as "
                        "recorded; only resume-safe key=value overrides)")
    s.add_argument("--recipe", default=None, help="a bundled recipe name or a YAML file (default: "
                   f"{DEFAULT_RECIPE})")
    s.add_argument("--strategy", default=None, choices=STRATEGIES,
                   help="what trains (sets finetune.strategy; default: the recipe's, "
                        f"{bundled_value(DEFAULT_RECIPE, 'finetune.strategy')} in {DEFAULT_RECIPE}). two-stage trains "
                        "the head alone for finetune.stage1_epochs, then everything for train.epochs more")
    s.add_argument("--unfreeze-stages", type=int, default=None, help="with --strategy partial: how many of the "
                   "last stages train (sets finetune.unfreeze_stages; default: the recipe's)")
    s.add_argument("--image-size", type=int, default=None, help="input side the images are resized to (sets "
                   "data.image_size; default: the recipe's, else the weights' own size)")
    s.add_argument("--arch", default=None, help="architecture of a .pth state_dict (default: recipe model)")
    s.add_argument("--data-dir", default=None, help="CIFAR data root for --data cifar10/cifar100 (default: "
                   "$RESNETLAB_DATA, else ./data)")
    s.add_argument("--out", default=None, help="run folder (default: runs/finetune-<strategy>)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    add_data_flags(s)
    add_overrides(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..errors import UserError
    from ..finetune import resume_finetune, run_finetune
    from ..training.config import load_recipe
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in ("weights", "data", "recipe", "strategy", "unfreeze_stages", "image_size",
                                                      "arch", "out") if getattr(args, k) is not None]
        if given:
            raise UserError(f"--resume {args.resume}: the run's own {given[0][2:]} is used; drop {given[0]}")
        resume_finetune(args.resume, args.data_dir, list(args.overrides) + flag_overrides(args),
                        progress=not args.no_progress)
        return
    missing = [f"--{k}" for k in ("weights", "data") if getattr(args, k) is None]
    if missing:
        raise UserError(f"finetune needs {' and '.join(missing)} (or --resume RUN to continue a run)")
    overrides = list(args.overrides)
    literal: dict[str, object] = {}  # values taken as given (a path is a string, never YAML)
    if args.data in ("cifar10", "cifar100"):
        literal["data.dataset"] = args.data
    else:
        literal.update({"data.dataset": "folder", "data.path": args.data})
    if args.strategy:
        literal["finetune.strategy"] = args.strategy
    if args.unfreeze_stages is not None:
        literal["finetune.unfreeze_stages"] = args.unfreeze_stages
    if args.image_size is not None:
        literal["data.image_size"] = args.image_size
    recipe = load_recipe(args.recipe or DEFAULT_RECIPE, overrides + flag_overrides(args), literal=literal)
    out = Path(args.out) if args.out else None  # default chosen by rank 0: runs/finetune-<strategy>[-N]
    run_finetune(args.weights, recipe, out, args.data_dir, args.arch, progress=not args.no_progress)
