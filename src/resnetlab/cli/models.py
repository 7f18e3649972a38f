"""`resnetlab models`: the zoo with parameters and MACs, counted from the models themselves.

Counting all 66 rows takes ~19 s on 2 cores even with the models built on the meta device (no memory,
no arithmetic), so the figures ship as a table (resnetlab/models/zoo.json) that this command prints at
once; `--count` counts them live, and a test keeps the table equal to what --count gives. A registered
model missing from the table is counted live."""
from __future__ import annotations

import argparse
import json
from importlib import resources

from ..errors import UserError

TABLE = "zoo.json"


def add_parser(sub) -> None:
    s = sub.add_parser("models", help="the model zoo: params, MACs, input size")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.add_argument("--count", action="store_true", help="count params and MACs now instead of reading the "
                   "shipped table (~20 s)")
    s.set_defaults(func=run)


def variants(name: str) -> list[tuple[dict, str]]:
    """The rows shown for a model: as registered, with the CIFAR stem (ImageNet nets), separable blocks
    (count_rows leaves out those the model cannot be built with, e.g. separable grouped convolutions)."""
    from ..models import get_spec
    spec = get_spec(name)
    out = [({}, "")]
    if spec.family == "imagenet":
        out.append(({"stem": "cifar"}, " (stem=cifar)"))
    if "block" in spec.args:  # the depthwise-separable variant beside the standard block
        out += [(dict(kw, block="separable"), suffix + " (block=separable)") for kw, suffix in out]
    return out


def count_row(name: str, kw: dict, suffix: str) -> dict:
    """Params and MACs of one variant, built on the meta device (shapes only, nothing allocated)."""
    import torch

    from ..evaluation.profile import count_macs, count_params
    from ..models import create_model, get_spec, natural_input_size
    spec = get_spec(name)
    nc = 1000 if spec.family == "imagenet" and kw.get("stem") != "cifar" else 10
    with torch.device("meta"):
        model = create_model(name, num_classes=nc, **kw)
    size = natural_input_size(name, **kw)
    macs = count_macs(model, size, device="meta")
    return {"name": name + suffix, "classes": nc, "input": size, "params": count_params(model), "macs": macs,
            "flops": 2 * macs}


def shipped_table() -> dict[str, dict]:
    path = resources.files("resnetlab.models").joinpath(TABLE)
    return {r["name"]: r for r in json.loads(path.read_text(encoding="utf-8"))}


def count_rows(name: str) -> list[dict]:
    rows = []
    for kw, suffix in variants(name):
        try:
            rows.append(count_row(name, kw, suffix))
        except UserError:  # a combination this architecture cannot build
            continue
    return rows


def table(count: bool = False) -> list[dict]:
    """Every row, in registry order: from the shipped table, or counted (all with count; else the models the
    table does not know)."""
    from ..models import list_models
    shipped = {} if count else shipped_table()
    rows = []
    for name in list_models():
        known = [r for key, r in shipped.items() if key == name or key.startswith(name + " (")]
        rows += known or count_rows(name)
    return rows


def run(args: argparse.Namespace) -> None:
    rows = table(args.count)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<46}{'classes':>8}{'input':>7}{'params':>14}{'MACs (G)':>11}{'FLOPs (G)':>11}")
    for r in rows:
        print(f"{r['name']:<46}{r['classes']:>8}{r['input']:>7}{r['params']:>14,}{r['macs'] / 1e9:>11.3f}"
              f"{r['flops'] / 1e9:>11.3f}")
    print("MACs = multiply-accumulates of one forward pass (what papers call 'FLOPs'); FLOPs = 2 x MACs; "
          "counted with torch.utils.flop_counter.")
