"""`resnetlab lr-find`: the learning-rate range test for a training or fine-tuning recipe: a curve and a value."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_flags, add_overrides, flag_overrides


def add_parser(sub) -> None:
    s = sub.add_parser("lr-find", help="suggest a learning rate: a short sweep of the recipe at exponentially "
                                       "growing rates, its loss curve and the rate where the loss falls fastest")
    s.add_argument("--recipe", default=None, help="a bundled recipe name or a YAML file (default: cifar10_quick, or "
                                                  "finetune_cifar100_subset with --weights)")
    s.add_argument("--weights", default=None, help="sweep the fine-tuning recipe on these pretrained weights (as "
                                                   "`finetune --weights`)")
    s.add_argument("--data", default=None, help="with --weights: the images to fine-tune on (as `finetune --data`)")
    s.add_argument("--arch", default=None, help="architecture of a .pth state_dict (default: the recipe's model)")
    s.add_argument("--data-dir", default=None, help="CIFAR data root (default: $RESNETLAB_DATA, else ./data)")
    s.add_argument("--start", type=float, default=1e-7, help="first learning rate of the sweep")
    s.add_argument("--end", type=float, default=10.0, help="last learning rate (the sweep stops earlier when the "
                                                          "loss diverges)")
    s.add_argument("--steps", type=int, default=100, help="training steps of the sweep")
    s.add_argument("--out", default=None, help="folder for lr_find.png and lr_find.csv (default: "
                                               "runs/lr-find-<recipe name>)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_flags(s)
    add_overrides(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..errors import UserError
    from ..training.config import load_recipe
    from ..lr_sweep import lr_find
    literal: dict[str, object] = {}
    if args.weights:
        if not args.data:
            raise UserError("lr-find --weights needs --data (the images to fine-tune on)")
        literal = ({"data.dataset": args.data} if args.data in ("cifar10", "cifar100")
                   else {"data.dataset": "folder", "data.path": args.data})
    elif args.data:
        raise UserError("--data goes with --weights (a fine-tuning sweep); a training recipe names its own data")
    name = args.recipe or ("finetune_cifar100_subset" if args.weights else "cifar10_quick")
    recipe = load_recipe(name, list(args.overrides) + flag_overrides(args), literal=literal)
    out = Path(args.out) if args.out else Path("runs") / f"lr-find-{recipe.name}"
    s = lr_find(recipe, out, args.data_dir, args.weights, args.arch, args.start, args.end, args.steps,
                progress=not args.no_progress)
    if s.suggestion is None:
        raise UserError(f"no suggestion: the loss never fell over {len(s.lrs)} steps ({s.stopped}); widen the "
                        f"sweep (--start, --end) or give it more --steps; the curve is in {out}")
    print(f"suggested: optim.lr={s.suggestion:.3g}; the recipe has {recipe.optim.lr:g}")
