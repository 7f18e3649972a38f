"""resnetlab: ResNets from scratch in PyTorch — build, train, evaluate, fine-tune, serve.

The Python API: models (`create_model`, `list_models`, `load_model`), inference (`load`, `Classifier`), the
two workflows of the command line, `train` and `finetune`, which take a recipe (a bundled name, a YAML file
or a `Recipe`) and return the results they also write into the run folder, `resume` (either, interrupted) and
`lr_find` (the learning-rate range test).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ._version import __version__
from .errors import UserError

if TYPE_CHECKING:
    from .inference.predict import Classifier, load
    from .models import create_model, list_models, load_model
    from .training.config import Recipe, bundled_recipes, load_recipe

__all__ = ["create_model", "list_models", "load", "load_model", "Classifier", "UserError", "Recipe",
           "load_recipe", "bundled_recipes", "train", "finetune", "resume", "lr_find", "__version__"]

# The API is imported on first use (PEP 562), so that `import resnetlab.<module>` of a module that needs no torch
# (the CLI's --help and --version, resnetlab.decoding) does not pay for importing torch.
_LAZY = {"Classifier": ".inference.predict", "load": ".inference.predict", "create_model": ".models",
         "list_models": ".models", "load_model": ".models", "Recipe": ".training.config",
         "bundled_recipes": ".training.config", "load_recipe": ".training.config"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _recipe(recipe: str | Path | Recipe, overrides: dict[str, Any] | list[str] | None,
            literal: dict[str, Any] | None = None) -> Recipe:
    """A Recipe from a name, file or Recipe, with overrides: a dict {dotted key: Python value} or a list of
    "key=value" strings (YAML values, as on the command line)."""
    from .training.config import Recipe, load_recipe
    if isinstance(recipe, Recipe):
        base, path = recipe.to_dict(), None
    else:
        base, path = None, recipe
    pairs = dict(overrides) if isinstance(overrides, dict) else {}
    strings = list(overrides) if isinstance(overrides, (list, tuple)) else []
    return load_recipe(path, strings, literal={**(literal or {}), **pairs}, base=base)


def train(recipe: str | Path | Recipe = "cifar10_quick", out: str | Path | None = None,
          data_dir: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None,
          progress: bool = False, log: Callable[..., None] = print) -> dict[str, Any]:
    """Train a recipe as `resnetlab train` does; returns the results (also in <out>/results.json).

    resnetlab.train("cifar10_quick", out="runs/try", overrides={"train.epochs": 1, "data.subset": 1000})
    out None: runs/<recipe name>[-N] under the working folder; data_dir None: $RESNETLAB_DATA, else ./data."""
    from .training.runner import train_recipe
    r = _recipe(recipe, overrides)
    return train_recipe(r, Path(out) if out is not None else None, str(data_dir) if data_dir else None,
                        progress=progress, log=log)


def finetune(weights: str | Path, data: str | Path, recipe: str | Path | Recipe = "finetune_cifar100_subset",
             out: str | Path | None = None, data_dir: str | Path | None = None,
             overrides: dict[str, Any] | list[str] | None = None, arch: str | None = None,
             progress: bool = False, log: Callable[..., None] = print) -> dict[str, Any]:
    """Fine-tune weights (resnetlab .safetensors, torchvision .pth, `torchvision:NAME`) on an image folder,
    or on "cifar10" / "cifar100", as `resnetlab finetune` does; returns the summary (also summary.json)."""
    from .finetune import run_finetune
    data = str(data)
    literal = ({"data.dataset": data} if data in ("cifar10", "cifar100") else
               {"data.dataset": "folder", "data.path": data})
    r = _recipe(recipe, overrides, literal)
    return run_finetune(str(weights), r, Path(out) if out is not None else None,
                        str(data_dir) if data_dir else None, arch, progress=progress, log=log)


def resume(run: str | Path, data_dir: str | Path | None = None, overrides: list[str] | None = None,
           progress: bool = False, log: Callable[..., None] = print) -> dict[str, Any]:
    """Continue an interrupted run exactly, as `resnetlab train --resume` / `finetune --resume` do: a fine-tuning
    run folder (<stage>-last checkpoints) continues as fine-tuning, any other as training. overrides: the
    resume-safe "key=value" strings (train.epochs=N, …)."""
    from .training.rundir import is_finetune_run
    run = Path(run)
    if is_finetune_run(run):
        from .finetune import resume_finetune
        return resume_finetune(run, str(data_dir) if data_dir else None, list(overrides or ()), progress, log)
    from .training.runner import train_recipe
    return train_recipe(None, run, str(data_dir) if data_dir else None, resume=True, progress=progress, log=log,
                        overrides=list(overrides or ()))


def lr_find(recipe: str | Path | Recipe = "cifar10_quick", out: str | Path = "runs/lr-find",
            weights: str | Path | None = None, data: str | Path | None = None, data_dir: str | Path | None = None,
            overrides: dict[str, Any] | list[str] | None = None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, progress: bool = False, log: Callable[..., None] = print):
    """The learning-rate range test, as `resnetlab lr-find` does (with weights and data: of the fine-tuning recipe
    on them); returns the sweep (`.suggestion`, `.lrs`, `.losses`) and writes lr_find.png/.csv into out."""
    from .lr_sweep import lr_find as sweep
    literal = None
    if weights is not None:
        if data is None:
            raise UserError("lr_find with weights needs data (the images to fine-tune on)")
        data = str(data)
        literal = ({"data.dataset": data} if data in ("cifar10", "cifar100") else
                   {"data.dataset": "folder", "data.path": data})
    r = _recipe(recipe, overrides, literal)
    return sweep(r, Path(out), str(data_dir) if data_dir else None, str(weights) if weights else None,
                 start=start, end=end, steps=steps, progress=progress, log=log)
