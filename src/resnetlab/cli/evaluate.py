"""`resnetlab eval CKPT`: test accuracy, per-class accuracy and confusion matrix of a checkpoint."""
from __future__ import annotations

import argparse
import functools
import json
import sys

from .common import images_to_evaluate, recorded_test_split


def add_parser(sub) -> None:
    s = sub.add_parser("eval", help="evaluate a checkpoint on its test split")
    s.add_argument("checkpoint", help="a .safetensors checkpoint, a run folder (its best checkpoint) or an .onnx file "
                                      "from `resnetlab export` (float or int8)")
    s.add_argument("--data-dir", default=None, help="data root holding the checkpoint's data set (default: "
                   "the root it recorded if it holds the data, else $RESNETLAB_DATA, else ./data)")
    s.add_argument("--device", default=None, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps (default: the "
                   "recipe's train.device)")
    s.add_argument("--tta", action="store_true",
                   help="average over the test-time views the run itself was tested with: the image, its mirror "
                        "and, when its recipe has train.tta_shift N, both moved by +-N px (6 views)")
    s.add_argument("--tta-shift", type=int, default=None, metavar="N",
                   help="with --tta: move the views by +-N px instead of the recipe's train.tta_shift (0: flips only)")
    s.add_argument("--data", default=None, metavar="SOURCE",
                   help="evaluate on every image of SOURCE instead of the run's test split: cifar10 / cifar100 (the "
                        "whole official test split) or an image folder, manifest or shards named by the model's "
                        "classes")
    s.add_argument("--full-test", action="store_true",
                   help="the run's whole test split, also after a data.subset run (which tests on a subset/5 slice)")
    s.add_argument("--no-verify", action="store_true", help="skip CIFAR checksum verification")
    s.add_argument("--json", action="store_true", help="print the figures (and per-class accuracy) as JSON")
    s.set_defaults(func=run)


def _views(tta: bool, shift: int) -> str:
    if not tta:
        return ""
    return f", 6-view TTA: flips, +-{shift} px" if shift else ", flip TTA"


def run(args: argparse.Namespace) -> None:
    from ..errors import UserError
    from ..evaluation.metrics import evaluate
    from ..evaluation.report import write_confusion
    from ..models import load_model
    from ..training.config import recipe_key
    from ..training.runner import eval_batch_for, make_loaders, setup_runtime
    from ..weights import resolve_checkpoint
    if args.tta_shift is not None and not args.tta:
        raise UserError(f"--tta-shift {args.tta_shift}: needs --tta")
    bounds = recipe_key("train.tta_shift").range  # the recipe key's own bounds
    if args.tta_shift is not None and not bounds.contains(args.tta_shift):
        raise UserError(f"--tta-shift {args.tta_shift}: must be {bounds.low} to {bounds.high} pixels")
    if args.data and args.full_test:
        raise UserError(f"--full-test is for the run's own test split; --data {args.data} evaluates on that source "
                        f"instead: give one of them")
    path = resolve_checkpoint(args.checkpoint)
    if path.suffix == ".onnx":  # an exported graph (float or int8), run by ONNX Runtime on the same test split
        from ..inference.onnx_runtime import GraphAsModule, OnnxClassifier
        clf = OnnxClassifier(path)
        model, meta = GraphAsModule(clf), clf.metadata
    else:
        model, meta = load_model(path)
    if args.data:
        from ..training.config import Recipe, recipe_from_dict
        from ..training.runner import Splits
        recipe = recipe_from_dict(meta.recipe) if meta.recipe else Recipe()
        recipe.train.device = args.device or recipe.train.device
        test = images_to_evaluate(args.data, meta, args.data_dir, not args.no_verify,
                                  log=functools.partial(print, file=sys.stderr))
        splits, name = Splits(test, None, test, tuple(meta.mean), tuple(meta.std)), args.data
    elif not meta.recipe:
        raise UserError(f"{path}: carries no recipe or data paths (an export), so it has no test split of its own; "
                        f"evaluate it on --data cifar10|cifar100|FOLDER")
    else:
        recipe, splits = recorded_test_split(meta, path, args.data_dir, args.device, verify=not args.no_verify,
                                             full_test=args.full_test)
        name = f"{recipe.data.dataset} test"
    recipe.train.tta = args.tta
    shift = (recipe.train.tta_shift if args.tta_shift is None else args.tta_shift) if args.tta else 0
    device, amp, cl = setup_runtime(recipe)
    model = model.to(device)
    log = functools.partial(print, file=sys.stderr) if args.json else print  # stdout holds only the JSON
    batch = (recipe.train.eval_batch_size if path.suffix == ".onnx"  # (the graph's activations are out of sight)
             else eval_batch_for(recipe.train.eval_batch_size, model, meta.input_size, device, log))
    _, _, test_l = make_loaders(recipe, splits, device, cl, meta.input_size, batch)
    res = evaluate(model, test_l, meta.num_classes, tta=args.tta, amp_dtype=amp, tta_shift=shift)
    out = path.parent / "eval"  # inside the run folder the checkpoint belongs to
    out.mkdir(parents=True, exist_ok=True)
    write_confusion(res, meta.classes, out / "confusion")
    summary = dict(res.summary(), tta=args.tta, tta_shift=shift,
                   per_class=dict(zip(meta.classes, res.per_class())), confusion_csv=str(out / "confusion.csv"))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{meta.arch} on {name} ({res.n} images{_views(args.tta, shift)}): "
          f"top-1 {res.top1:.4f}  top-5 {res.top5:.4f}  loss {res.loss:.4f}")
    for name, acc in zip(meta.classes, res.per_class()):
        print(f"  {name:<16}{acc:.4f}")
    print(f"confusion matrix: {out / 'confusion.csv'}")
