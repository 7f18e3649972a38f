"""Fine-tuning: pretrained weights → new head → freeze policy → one or two stages, all trained by
training.engine.Trainer (the same loop as `resnetlab train`).

Weight sources: a resnetlab checkpoint (.safetensors with metadata), a torchvision-format state_dict
(.pth, read with torch.load(weights_only=True)), or `torchvision:<name>` for torchvision's published
ImageNet weights (downloaded once into a cache with a hash check).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .evaluation.profile import count_params
from .models import create_model, natural_input_size

HEAD_KEYS = ("fc.weight", "fc.bias")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMAGENET1K_V1 weights; the file name carries the first 8 hex digits of the SHA-256.
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}


def cache_dir() -> Path:
    return Path(os.environ.get("RESNETLAB_CACHE", Path.home() / ".cache" / "resnetlab"))


def fetch_torchvision_weights(name: str, url: str | None = None) -> Path:
    if name not in TORCHVISION_URLS:
        raise UserError(f"no torchvision weights for {name!r}; choose one of {', '.join(TORCHVISION_URLS)}")
    url = url or TORCHVISION_URLS[name]
    fname = TORCHVISION_URLS[name].rsplit("/", 1)[1]
    prefix = fname.rsplit("-", 1)[1].split(".")[0]
    target = cache_dir() / fname
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            h = hashlib.sha256()
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot download {url} ({getattr(e, 'reason', e)}); offline? save the torchvision "
                        f"state_dict as a .pth file and pass --weights FILE.pth") from None
    if not h.hexdigest().startswith(prefix):
        tmp.unlink(missing_ok=True)
        raise UserError(f"{url}: SHA-256 {h.hexdigest()[:8]}… does not match {prefix}; removed the download")
    os.replace(tmp, target)
    return target


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, resnetlab metadata or {}) from any supported weight source."""
    src = str(source)
    if src.startswith("torchvision:"):
        name = src.split(":", 1)[1]
        sd, _ = read_weights(fetch_torchvision_weights(name))
        return sd, {"arch": name, "kwargs": {}, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                    "input_size": 224, "classes": None}
    path = Path(src)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from .training.checkpoint import read_checkpoint
        return read_checkpoint(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:  # noqa: BLE001 - any failure is a bad file for the user
        raise UserError(f"{path}: cannot read as a weights-only state_dict ({str(e).splitlines()[0]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}, {}


def load_backbone_weights(model: nn.Module, source: str | Path | dict, verbose: bool = True,
                          log=print) -> dict[str, list[str]]:
    """Load every tensor but a mismatched head; refuse, listing keys, when the backbone differs."""
    sd = source if isinstance(source, dict) else read_weights(source)[0]
    own = model.state_dict()
    missing = [k for k in own if k not in sd and k not in HEAD_KEYS]
    unexpected = [k for k in sd if k not in own and k not in HEAD_KEYS]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and k not in HEAD_KEYS and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = ([f"missing: {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}"] if missing else []) + \
                   ([f"unexpected: {', '.join(unexpected[:6])}{' …' if len(unexpected) > 6 else ''}"] if unexpected else []) + \
                   ([f"shape mismatch: {'; '.join(wrong[:4])}"] if wrong else [])
        raise UserError(f"weights do not match the {type(model).__name__} backbone ({' | '.join(problems)}); "
                        f"pick the architecture the weights were trained with")
    load = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    new = [k for k in own if k not in load]
    own.update(load)
    model.load_state_dict(own)
    if verbose:
        log(f"loaded {len(load)} tensors; newly initialised: {', '.join(new) if new else 'none'}")
    return {"loaded": list(load), "new": new}


def map_head(model: nn.Module, sd: dict[str, torch.Tensor], old: list[str] | None, new: list[str],
             log=print) -> None:
    """Continual use: keep the trained head rows of classes that are still there (by name); classes
    that are new get freshly initialised rows, appended in the new class order."""
    if not old or "fc.weight" not in sd:
        return
    keep = [(new.index(c), old.index(c)) for c in old if c in new]
    if not keep:
        return
    with torch.no_grad():
        for dst, src in keep:
            model.fc.weight[dst] = sd["fc.weight"][src]
            if model.fc.bias is not None and "fc.bias" in sd:
                model.fc.bias[dst] = sd["fc.bias"][src]
    log(f"head: kept {len(keep)} trained class rows, {len(new) - len(keep)} new class rows")


def apply_strategy(model: nn.Module, strategy: str, unfreeze_stages: int, freeze_bn_stats: bool):
    """Set requires_grad per strategy; returns a callable that puts frozen parts' BN in eval mode
    (so a linear probe keeps the pretrained statistics), to be re-applied after model.train()."""
    stages = model.stages()
    if strategy == "linear-probe":
        trainable: list[nn.Module] = [model.fc]
    elif strategy == "partial":
        if not 1 <= unfreeze_stages <= len(stages):
            raise UserError(f"--unfreeze-stages must be between 1 and {len(stages)} for this model")
        trainable = [model.fc] + list(stages[-unfreeze_stages:])
        final_bn = getattr(model, "final_bn", None)
        if final_bn is not None:
            trainable.append(final_bn)
    else:
        trainable = [model]
    # Layers that are fixed by design (ResNet-9's whitening filters) never train, whatever the strategy.
    fixed = {id(p) for p in model.whiten.parameters()} if getattr(model, "whiten", None) is not None else set()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(id(p) not in fixed)
    trainable_ids = {id(p) for m in trainable for p in m.parameters() if id(p) not in fixed}

    def frozen_bn(m: nn.Module) -> None:
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                frozen = all(id(p) not in trainable_ids for p in mod.parameters())
                if frozen or freeze_bn_stats:
                    mod.eval()
    return frozen_bn


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float] | None:
    """Discriminative learning rates: head 1, last stage decay, …, first stage decay**K, stem decay**(K+1)."""
    if decay >= 1.0:
        return None
    stage_ids = {id(m): i for i, m in enumerate(model.stages())}
    k = len(stage_ids)
    scales = {}
    for name, child in model.named_children():
        if name == "fc" or not any(True for _ in child.parameters()):
            continue
        i = stage_ids.get(id(child))
        scales[name + "."] = decay ** (k - i) if i is not None else decay ** (k + 1)
    return scales


def run_finetune(weights: str, recipe, out: str | Path, data_dir: str | None = None, arch: str | None = None,
                 progress: bool = True, log=print) -> dict[str, Any]:
    from .training.engine import Trainer
    from .training.runner import data_ref, finish_run, load_splits, make_loaders, model_meta, setup_runtime
    from .evaluation.report import write_report

    run_dir = Path(out)
    if (run_dir / "summary.json").exists():
        raise UserError(f"{run_dir}: already holds a fine-tuning run; choose another --out")
    sd, src_meta = read_weights(weights)
    name = src_meta.get("arch") or arch or recipe.model.name
    kwargs = src_meta.get("kwargs") or dict(recipe.model.kwargs)
    f = recipe.finetune
    input_size = recipe.data.image_size or src_meta.get("input_size") or natural_input_size(name, **kwargs)
    if recipe.data.dataset == "folder":
        recipe.data.image_size = input_size
    mean_std = (tuple(src_meta["mean"]), tuple(src_meta["std"])) if src_meta.get("mean") else (
        (IMAGENET_MEAN, IMAGENET_STD) if Path(str(weights)).suffix in (".pth", ".pt") else None)
    device, amp, cl = setup_runtime(recipe)
    splits = load_splits(recipe.data, data_dir, progress, mean_std=mean_std)
    classes = list(splits.classes)
    old = src_meta.get("classes")
    if old and set(old) <= set(classes) and old != classes[:len(old)]:
        # keep the old order, append new classes: the head rows stay where they were
        classes = old + [c for c in classes if c not in old]
        remap = torch.tensor([classes.index(c) for c in splits.classes])
        for ds in (splits.train, splits.val, splits.test):
            if ds is not None:
                ds.labels = remap[ds.labels]
                ds.classes = classes
    torch.manual_seed(recipe.train.seed)

    def fresh_model() -> nn.Module:
        m = create_model(name, num_classes=len(classes), **kwargs)
        load_backbone_weights(m, sd, verbose=False)
        map_head(m, sd, old, classes, log=lambda *_: None)
        return m

    model = create_model(name, num_classes=len(classes), **kwargs)
    report = load_backbone_weights(model, sd, log=log)
    map_head(model, sd, old, classes, log=log)
    meta = model_meta(name, kwargs, classes, splits.mean, splits.std, input_size, recipe,
                      dataset=data_ref(recipe.data, data_dir), finetuned_from=str(weights))
    train_l, val_l, test_l = make_loaders(recipe, splits, device, cl, input_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"fine-tuning {name} ({count_params(model):,} params) on {len(splits.train)} images, "
        f"{len(classes)} classes, input {input_size}px, strategy {f.strategy}")

    def stage(m: nn.Module, strategy: str, prefix: str, lr_mult: float = 1.0, epochs: int | None = None,
              freeze_stats: bool = False) -> dict:
        import copy
        r = copy.deepcopy(recipe)
        r.optim.lr *= lr_mult
        if epochs is not None:
            r.train.epochs = epochs
        frozen = apply_strategy(m, strategy, f.unfreeze_stages, freeze_stats)
        scales = layer_lr_scales(m, f.layer_decay) if strategy != "linear-probe" else None
        tr = Trainer(m, r, train_l, val_l, run_dir, meta, device, amp, cl, lr_scales=scales,
                     frozen_bn=frozen, progress=progress, log=log, prefix=prefix)
        log(f"[{prefix.rstrip('-')}] {strategy}: {count_params(m, trainable_only=True):,} trainable params")
        state = tr.fit()
        res = finish_run(tr, splits, test_l, state, log=log)
        res["strategy"] = strategy
        return res

    results: dict[str, Any] = {"loaded": len(report["loaded"]), "new": report["new"]}
    if f.strategy == "two-stage":
        r1 = stage(model, "linear-probe", "stage1-", epochs=f.stage1_epochs)
        r2 = stage(model, "full", "stage2-", lr_mult=f.stage2_lr_mult, freeze_stats=f.freeze_bn_stats)
        results.update(before=r1, after=r2)
    else:
        after = stage(model, f.strategy, f"{f.strategy}-", freeze_stats=f.freeze_bn_stats)
        before = after if f.strategy == "linear-probe" else (
            stage(fresh_model(), "linear-probe", "probe-") if f.compare else None)
        results.update(before=before, after=after)
    b, a = results["before"], results["after"]
    summary = {"weights": str(weights), "strategy": f.strategy, "classes": classes,
               "before_linear_probe": b["test"] if b else None, "after": a["test"],
               "time_min": sum(x["train_time_min"] for x in {id(b): b, id(a): a}.values() if x)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run_dir)
    if b:
        log(f"before (linear probe of pretrained net): top-1 {b['test']['top1']:.4f}  top-5 {b['test']['top5']:.4f}")
    log(f"after ({f.strategy}): top-1 {a['test']['top1']:.4f}  top-5 {a['test']['top5']:.4f}")
    return summary


def cmd_finetune(args: argparse.Namespace) -> None:
    from .training.config import load_recipe
    overrides = list(args.overrides)
    data = args.data
    if data in ("cifar10", "cifar100"):
        overrides.append(f"data.dataset={data}")
    else:
        overrides += ["data.dataset=folder", f"data.path={data}"]
    if args.strategy:
        overrides.append(f"finetune.strategy={args.strategy}")
    if args.unfreeze_stages is not None:
        overrides.append(f"finetune.unfreeze_stages={args.unfreeze_stages}")
    if args.image_size:
        overrides.append(f"data.image_size={args.image_size}")
    from .cli import flag_overrides, next_run_dir
    recipe = load_recipe(args.recipe, overrides + flag_overrides(args))
    out = Path(args.out) if args.out else next_run_dir(Path("runs") / f"finetune-{recipe.finetune.strategy}")
    run_finetune(args.weights, recipe, out, args.data_dir, args.arch, progress=not args.no_progress)
    print(f"run folder: {out}")


def add_finetune_parser(sub) -> None:
    s = sub.add_parser("finetune", help="fine-tune pretrained weights on new data")
    s.add_argument("--weights", required=True, help="resnetlab .safetensors, torchvision .pth, or torchvision:NAME")
    s.add_argument("--data", required=True, help="image folder, or cifar10 / cifar100")
    s.add_argument("--recipe", default="recipes/finetune_cifar100_subset.yaml")
    s.add_argument("--strategy", choices=["linear-probe", "partial", "full", "two-stage"], default=None)
    s.add_argument("--unfreeze-stages", type=int, default=None)
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--arch", default=None, help="architecture of a .pth state_dict (default: recipe model)")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--out", default=None)
    s.add_argument("--no-progress", action="store_true")
    from .cli import add_data_flags
    add_data_flags(s)
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(func=cmd_finetune)
