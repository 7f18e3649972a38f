"""Flags shared by several commands. Convenience flags become recipe overrides, so the recipe stays
the single source of truth."""
from __future__ import annotations

import argparse


def bundled_value(recipe: str, key: str):
    """A key's value in a bundled recipe, read from its YAML (for help texts: without importing torch)."""
    from importlib import resources

    import yaml
    value = yaml.safe_load(resources.files("resnetlab.recipes").joinpath(f"{recipe}.yaml").read_text())
    for part in key.split("."):
        value = value[part]
    return value


def add_data_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-verify", action="store_true", help="skip CIFAR checksum verification")
    s.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    s.add_argument("--device", default=None, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if getattr(args, "no_verify", False):
        out.append("data.verify=false")
    if getattr(args, "strict", False):
        out.append("data.strict=true")
    if getattr(args, "device", None):
        out.append(f"train.device={args.device}")
    return out


def add_overrides(s: argparse.ArgumentParser) -> None:
    s.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.epochs=5 "
                   "optim.lr=0.05 (may come before or after the options)")


def recorded_test_split(meta, path, data_dir: str | None = None, device: str | None = None,
                        verify: bool = True, full_test: bool = False):
    """The test split a checkpoint was trained beside, found from its recorded recipe and data paths:
    (recipe, splits). full_test: the whole test split even when the run trained on a data.subset slice. Used by
    `eval` and by `export`'s self-check."""
    from ..errors import UserError
    from ..training.config import recipe_from_dict
    from ..data.cifar import holds_dataset
    from ..training.runner import load_splits

    if not meta.recipe:
        raise UserError(f"{path}: checkpoint has no recipe; cannot tell which data it was trained on")
    from ..training.runner import old_folder_split
    try:
        recipe = recipe_from_dict(meta.recipe)
    except UserError as e:
        raise UserError(f"{path}: the checkpoint's recipe: {e}") from None
    if old_folder_split(meta):
        import sys
        print(f"warning: {path} was trained before the decoded cache; its folder split is drawn differently now, "
              f"so this 'test split' may hold images it trained on (evaluate on --images or a held-out folder)",
              file=sys.stderr)
    recipe.train.device = device or recipe.train.device
    recipe.data.verify = recipe.data.verify and verify
    if full_test:
        recipe.data.subset = 0
    # The data root the run recorded is read only if it already holds the data set: a file's metadata never
    # chooses where resnetlab downloads or writes (that is --data-dir > $RESNETLAB_DATA > ./data).
    recorded = meta.data_ref.data_dir
    if data_dir is None and recipe.data.dataset != "folder" and holds_dataset(recorded, recipe.data.dataset):
        data_dir = recorded
    splits = load_splits(recipe.data, data_dir, progress=False, mean_std=(meta.mean, meta.std))
    return recipe, splits


def images_to_evaluate(source: str, meta, data_dir: str | None = None, verify: bool = True, log=print):
    """Every image of `source` as a test set labelled by the model's own classes: cifar10 / cifar100 (the whole
    official test split) or an image folder, manifest or shards whose class names are the model's (any subset of
    them), decoded as the model decodes files."""
    import torch

    from ..data import load_cifar_splits
    from ..data.folders import cached_set
    from ..errors import UserError
    if source in ("cifar10", "cifar100"):
        _, test = load_cifar_splits(data_dir, source, verify, download_missing=True, log=log)
    else:
        test, _ = cached_set(source, meta.policy.input_size, progress=False, log=log, mode=meta.policy.mode)
    unknown = [c for c in test.classes if c not in meta.classes]
    if unknown:
        shown = ", ".join(meta.classes[:5]) + (", …" if len(meta.classes) > 5 else "")
        raise UserError(f"{source}: class {unknown[0]!r} is not one of the model's {len(meta.classes)} classes "
                        f"({shown}); evaluate on images of its classes")
    remap = torch.tensor([meta.classes.index(c) for c in test.classes], dtype=torch.long)
    test.labels, test.classes = remap[test.labels], list(meta.classes)
    return test
