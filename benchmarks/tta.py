"""Which test-time views pay: top-1 of checkpoints under several sets of views, side by side.

Each checkpoint is scored on the validation images its own run held out (the runner's load_splits, from the recipe
stored in the checkpoint), so a choice made here never reads the test split; --split test scores the test split
instead (to confirm a choice made on validation, once). Logits of every view are computed once, under the autocast
the engine picks for the checkpoint's recipe on this machine (bf16 where the CPU has it), then combined per set:

    none          the image
    flip          + its mirror (2 views)
    flip+-1       + both moved by +-1 px along both axes (6 views)
    flip+-2       + both moved by +-2 px (6 views: the engine's tta_shift 2)
    flip+-1+-2    both shift sizes (10 views)
    airbench      airbench's weighting (Jordan 2024): logits averaged, 1/2 on the image pair, 1/4 on each +-1 px pair

    python benchmarks/tta.py RUN/last.safetensors [...] [--split val|test] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from resnetlab import load
from resnetlab.evaluation.metrics import tta_views
from resnetlab.preprocessing import model_input
from resnetlab.runtime import autocast_for, select_precision
from resnetlab.training.config import recipe_from_dict
from _common import held_out


def _mean_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.softmax(1) for v in logits]).mean(0)


# each set: how the logits of the views it uses combine into scores
SETS = {
    "none": lambda v: v["x"],
    "flip": lambda v: _mean_probs([v["x"], v["xf"]]),
    "flip+-1": lambda v: _mean_probs([v[k] for k in ("x", "xf", "p1", "p1f", "m1", "m1f")]),
    "flip+-2": lambda v: _mean_probs([v[k] for k in ("x", "xf", "p2", "p2f", "m2", "m2f")]),
    "flip+-1+-2": lambda v: _mean_probs([v[k] for k in ("x", "xf", "p1", "p1f", "m1", "m1f",
                                                         "p2", "p2f", "m2", "m2f")]),
    "airbench": lambda v: (v["x"] + v["xf"]) / 4 + (v["p1"] + v["p1f"] + v["m1"] + v["m1f"]) / 8,
}


@torch.no_grad()
def view_logits(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None,
                batch: int = 1000) -> dict[str, torch.Tensor]:
    """Logits of the image, its mirror and both moved by ±1 and ±2 px (the engine's own tta_views), under the
    autocast dtype amp (None: fp32)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        one, two = tta_views(xb, 1), tta_views(xb, 2)
        named = {"x": one[0], "xf": one[1], "m1": one[2], "m1f": one[3], "p1": one[4], "p1f": one[5],
                 "m2": two[2], "m2f": two[3], "p2": two[4], "p2f": two[5]}
        with autocast_for(x.device, amp):
            for k, v in named.items():
                parts.setdefault(k, []).append(model(v).float())
    return {k: torch.cat(v) for k, v in parts.items()}


def score(checkpoint: str, split: str) -> dict[str, float]:
    clf = load(checkpoint, device="cpu")
    images = held_out(clf, None, split)
    pixels = images.take(slice(0, len(images)))
    x = model_input(pixels, clf.metadata.mean, clf.metadata.std, clf.input_size)
    amp = select_precision(recipe_from_dict(clf.metadata.recipe).train.precision, clf.device)
    clf.model.eval()
    views = view_logits(clf.model, x, amp)
    return {name: float((combine(views).argmax(1) == images.labels).float().mean()) for name, combine in SETS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--json")
    args = ap.parse_args()
    table = {}
    print(f"{'checkpoint':<60}" + "".join(f"{k:>12}" for k in SETS))
    for ckpt in args.checkpoints:
        table[ckpt] = score(ckpt, args.split)
        print(f"{ckpt[-60:]:<60}" + "".join(f"{100 * v:>11.2f}%" for v in table[ckpt].values()), flush=True)
    mean = {k: sum(r[k] for r in table.values()) / len(table) for k in SETS}
    print(f"{'mean':<60}" + "".join(f"{100 * v:>11.2f}%" for v in mean.values()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "runs": table, "mean": mean}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
