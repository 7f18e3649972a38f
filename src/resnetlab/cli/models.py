"""`resnetlab models`: the zoo with parameters and MACs, counted from the models themselves."""
from __future__ import annotations

import argparse
import json

from ..evaluation.profile import count_macs, count_params
from ..models import create_model, get_spec, list_models, natural_input_size


def add_parser(sub) -> None:
    s = sub.add_parser("models", help="the model zoo: params, MACs, input size")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    rows = []
    for name in list_models():
        spec = get_spec(name)
        variants = [({}, "")]
        if spec.family == "imagenet":
            variants.append(({"stem": "cifar"}, " (stem=cifar)"))
        if "block" in spec.args:  # the depthwise-separable variant beside the standard block
            variants += [(dict(kw, block="separable"), suffix + " (block=separable)") for kw, suffix in variants]
        for kw, suffix in variants:
            nc = 1000 if spec.family == "imagenet" and kw.get("stem") != "cifar" else 10
            model = create_model(name, num_classes=nc, **kw)
            size = natural_input_size(name, **kw)
            macs = count_macs(model, size)
            rows.append({"name": name + suffix, "classes": nc, "input": size, "params": count_params(model),
                         "macs": macs, "flops": 2 * macs})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<46}{'classes':>8}{'input':>7}{'params':>14}{'MACs (G)':>11}{'FLOPs (G)':>11}")
    for r in rows:
        print(f"{r['name']:<46}{r['classes']:>8}{r['input']:>7}{r['params']:>14,}{r['macs'] / 1e9:>11.3f}"
              f"{r['flops'] / 1e9:>11.3f}")
    print("MACs = multiply-accumulates of one forward pass (what papers call 'FLOPs'); FLOPs = 2 x MACs; "
          "counted with torch.utils.flop_counter.")
