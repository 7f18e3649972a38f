"""Command line: parses, calls the library, maps user errors to one line and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UserError


def cmd_models(args: argparse.Namespace) -> None:
    from .evaluation.profile import count_macs, count_params
    from .models import create_model, get_spec, list_models, natural_input_size
    rows = []
    for name in list_models():
        spec = get_spec(name)
        variants = [({}, "")]
        if spec.family == "imagenet":
            variants.append(({"stem": "cifar"}, " (stem=cifar)"))
        for kw, suffix in variants:
            nc = 1000 if spec.family == "imagenet" and not kw else 10
            model = create_model(name, num_classes=nc, **kw)
            size = natural_input_size(name, **kw)
            macs = count_macs(model, size)
            rows.append({"name": name + suffix, "classes": nc, "input": size, "params": count_params(model),
                         "macs": macs, "flops": 2 * macs})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<28}{'classes':>8}{'input':>7}{'params':>14}{'MACs (G)':>11}{'FLOPs (G)':>11}")
    for r in rows:
        print(f"{r['name']:<28}{r['classes']:>8}{r['input']:>7}{r['params']:>14,}{r['macs'] / 1e9:>11.3f}"
              f"{r['flops'] / 1e9:>11.3f}")
    print("MACs = multiply-accumulates of one forward pass (what papers call 'FLOPs'); FLOPs = 2 x MACs; "
          "counted with torch.utils.flop_counter.")


def next_run_dir(base: Path) -> Path:
    """runs/NAME, or runs/NAME-2, -3, … when taken (like YOLO's runs/train2): re-running never clobbers."""
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}-{n}").exists():
        n += 1
    return base.with_name(f"{base.name}-{n}")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """Convenience flags are recipe overrides, so the recipe stays the single source of truth."""
    out = []
    if getattr(args, "no_verify", False):
        out.append("data.verify=false")
    if getattr(args, "strict", False):
        out.append("data.strict=true")
    if getattr(args, "device", None):
        out.append(f"train.device={args.device}")
    return out


def add_data_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-verify", action="store_true", help="skip CIFAR checksum verification")
    s.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    s.add_argument("--device", default=None, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")


def cmd_train(args: argparse.Namespace) -> None:
    from .training.config import load_recipe
    from .training.runner import train_recipe
    if args.resume:
        out = Path(args.resume)
        recipe = None
    else:
        recipe = load_recipe(args.recipe, list(args.overrides) + flag_overrides(args))
        out = Path(args.out) if args.out else next_run_dir(Path("runs") / recipe.name)
    train_recipe(recipe, out, args.data_dir, resume=bool(args.resume), progress=not args.no_progress)
    print(f"run folder: {out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation.metrics import evaluate
    from .training.config import recipe_from_dict
    from .training.runner import load_splits, make_loaders, model_from_checkpoint, setup_runtime, write_confusion
    model, meta = model_from_checkpoint(args.checkpoint)
    recipe = recipe_from_dict(meta["recipe"]) if meta.get("recipe") else None
    if recipe is None:
        raise UserError(f"{args.checkpoint}: checkpoint has no recipe; cannot tell which data it was trained on")
    ref = meta.get("dataset", {})
    data_dir = args.data_dir or ref.get("data_dir")
    recipe.train.device = args.device or recipe.train.device
    recipe.train.tta = args.tta
    recipe.data.verify = recipe.data.verify and not args.no_verify
    device, amp, cl = setup_runtime(recipe)
    splits = load_splits(recipe.data, data_dir, progress=False, mean_std=(meta["mean"], meta["std"]))
    _, _, test_l = make_loaders(recipe, splits, device, cl, meta["input_size"])
    model = model.to(device)
    res = evaluate(model, test_l, meta["num_classes"], tta=args.tta, amp_dtype=amp)
    out = Path(args.checkpoint).with_suffix("").parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_confusion(res, meta["classes"], out / "confusion")
    summary = dict(res.summary(), tta=args.tta, per_class=dict(zip(meta["classes"], res.per_class())),
                   confusion_csv=str(out / "confusion.csv"))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{meta['arch']} on {recipe.data.dataset} test ({res.n} images{', flip TTA' if args.tta else ''}): "
          f"top-1 {res.top1:.4f}  top-5 {res.top5:.4f}  loss {res.loss:.4f}")
    for name, acc in zip(meta["classes"], res.per_class()):
        print(f"  {name:<16}{acc:.4f}")
    print(f"confusion matrix: {out / 'confusion.csv'}")


def cmd_report(args: argparse.Namespace) -> None:
    from .evaluation.report import write_report
    print(f"wrote {write_report(args.run_dir)}")


def cmd_download(args: argparse.Namespace) -> None:
    from .data.cifar import download, resolve_data_root
    fmt = "py" if args.format == "python" else "bin"
    path = download(f"{args.dataset}-{fmt}", resolve_data_root(args.data_dir), url=args.url)
    print(f"{args.dataset} ready in {path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnetlab", description="ResNets from scratch: build, train, "
                                "evaluate, fine-tune, serve.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="the model zoo: params, MACs, input size")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("train", help="train a recipe")
    s.add_argument("--recipe", default="recipes/cifar10_quick.yaml")
    s.add_argument("--data-dir", default=None, help="data root (default: $RESNETLAB_DATA, else ./data)")
    s.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    s.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue an interrupted run exactly")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    add_data_flags(s)
    s.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=5 optim.lr=0.05")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint on its test split")
    s.add_argument("checkpoint")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--device", default=None)
    s.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    s.add_argument("--no-verify", action="store_true", help="skip CIFAR checksum verification")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("report", help="write report.md with curves and the results table")
    s.add_argument("run_dir")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("download", help="fetch an official CIFAR archive (needs internet)")
    s.add_argument("dataset", choices=["cifar10", "cifar100"])
    s.add_argument("--format", choices=["binary", "python"], default="binary")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--url", default=None, help="mirror URL (file:// works)")
    s.set_defaults(func=cmd_download)

    try:
        from .finetune import add_finetune_parser
        add_finetune_parser(sub)
    except ImportError:
        pass
    try:
        from .inference.predict import add_predict_parser
        add_predict_parser(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `resnetlab models | head`
        sys.stderr = open(os.devnull, "w")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
