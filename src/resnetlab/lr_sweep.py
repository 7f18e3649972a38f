"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", §3.3; fastai's
`lr_find`, Lightning's `Tuner.lr_find`): a throwaway copy of the recipe's model trains for a few steps while the
learning rate grows exponentially from `start` to `end`; the loss is recorded and the sweep stops when it diverges
(a running average, beta 0.9, above 4x its minimum). The suggestion is the rate where the loss, smoothed by a
centred moving average over the finished sweep, falls fastest against log(lr) on its way to its minimum
(Lightning's rule, on a curve without lag: a running average at beta 0.98, as fastai and Lightning smooth, trails
the raw loss by ~50 steps, several decades of a 100-step sweep); not the minimum, where the loss is about to blow
up.

For a fine-tuning recipe the sweep trains what its strategy trains first: two-stage sweeps its head-only stage
(as fastai's lr_find before fine_tune), whose rate is optim.lr; its second stage runs at optim.lr x
finetune.stage2_lr_mult."""
from __future__ import annotations

import copy
import csv
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import UserError
from .files import atomic_write, atomic_write_text
from .training.config import Recipe
from .training.engine import Stage, Trainer

DIVERGED = 4.0      # the sweep stops when the running loss exceeds this multiple of its minimum
BETA = 0.9          # the running average that watches for divergence
SKIP_START, SKIP_END = 10, 5  # points of the curve the suggestion ignores (noise at the start, blow-up at the end)


@dataclass
class Sweep:
    lrs: list[float]
    losses: list[float]             # each step's loss
    smoothed: list[float]
    suggestion: float | None        # the learning rate of the steepest fall
    minimum: float | None           # the learning rate of the smoothed minimum
    stopped: str                    # why the sweep ended


class Running:
    """The debiased running average (what can be known during the sweep), one loss at a time."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta, self.avg, self.n = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta ** self.n)


def running(losses: list[float], beta: float = BETA) -> list[float]:
    r = Running(beta)
    return [r.add(loss) for loss in losses]


def lowest(values: list[float]) -> int | None:
    """The index of the smallest finite value; None when there is none."""
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    return min(finite, key=lambda i: values[i]) if finite else None


def smooth(losses: list[float]) -> list[float]:
    """A centred moving average over 5 % of the points (at least 5; fewer at the ends): no lag."""
    half = max(2, len(losses) // 40)
    x = np.asarray(losses, dtype=np.float64)
    return [float(np.mean(x[max(0, i - half):i + half + 1])) for i in range(len(x))]


def steepest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest per unit of log(lr) on its way to its minimum (a fall that
    follows the minimum is a recovery from instability, not a rate to train at); None when the curve is too short
    or never falls."""
    lo, hi = SKIP_START, min(len(lrs) - SKIP_END, (lowest(smoothed) or 0) + 1)
    if hi - lo < 3:
        return None
    curve = np.asarray(smoothed[lo:hi])
    slope = np.gradient(curve, np.log(np.asarray(lrs[lo:hi])))
    i = int(np.argmin(slope))
    falls = slope[i] < -1e-3 * float(np.median(np.abs(curve)))  # more than rounding: the loss really falls there
    return float(lrs[lo + i]) if falls else None


def sweep(trainer: Trainer, start: float, end: float, steps: int, progress: bool = True) -> Sweep:
    """Train trainer's model for up to `steps` steps at exponentially growing rates (its optimizer's groups keep
    their lr_scale); the weights are the sweep's own and are thrown away."""
    from tqdm import tqdm
    grow = (end / start) ** (1 / max(steps - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    best, stopped, watch = math.inf, f"reached {end:g}", Running()
    trainer.model.train()
    if trainer.stage.frozen_bn:
        trainer.stage.frozen_bn(trainer.model)
    bar = tqdm(total=steps, disable=not progress, leave=False, unit="step", desc="lr sweep")
    with trainer._stop:
        for x, y in itertools.islice(_epochs(trainer.train_loader), steps):
            lr = start * grow ** len(lrs)
            for g in trainer.optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            lrs.append(lr)
            losses.append(trainer.train_step(x, y)[0].detach().item())
            bar.update(1)
            current = watch.add(losses[-1])
            best = min(best, current)
            if not math.isfinite(current) or current > DIVERGED * best:
                stopped = f"the loss diverged at {lr:.3g}"
                break
            if trainer._stop.requested:
                stopped = "interrupted"
                break
    bar.close()
    smoothed = smooth(losses)
    i = lowest(smoothed)
    return Sweep(lrs, losses, smoothed, steepest(lrs, smoothed), lrs[i] if i is not None else None, stopped)


def _epochs(loader) -> Iterator:
    """The loader's batches, epoch after epoch (a loader without a batch yields nothing)."""
    epoch = 0
    while len(loader):
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def write_sweep(s: Sweep, out: Path, title: str) -> tuple[Path, Path]:
    """lr_find.csv (lr, loss, smoothed) and lr_find.png (the smoothed curve, the suggestion marked)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    rows = [["lr", "loss", "smoothed"]] + [[f"{a:.6g}", f"{b:.6g}", f"{c:.6g}"]
                                           for a, b, c in zip(s.lrs, s.losses, s.smoothed)]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(out / "lr_find.csv", buf.getvalue())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(s.lrs, s.losses, color="0.8", lw=0.8, label="loss")
    ax.plot(s.lrs, s.smoothed, color="C0", label="smoothed")
    if s.suggestion is not None:
        ax.axvline(s.suggestion, color="C3", ls="--", label=f"suggested {s.suggestion:.3g}")
    ax.set_xscale("log")
    finite = [v for v in s.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGED * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    png = out / "lr_find.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return out / "lr_find.csv", png


def lr_find(recipe: Recipe, out: str | Path, data_dir: str | None = None, weights: str | None = None,
            arch: str | None = None, start: float = 1e-7, end: float = 10.0, steps: int = 100,
            progress: bool = True, log=print) -> Sweep:
    """Sweep the recipe (with `weights`: the fine-tuning recipe on those pretrained weights) and write the curve
    into `out`."""
    from .evaluation.profile import count_params
    from .models import apply_strategy, build_model, stage_lr_scales
    from .training.runner import init_from_training_images, prepare_run
    if not (0 < start < end) or not math.isfinite(end):
        raise UserError(f"the sweep needs 0 < start < end, got start {start:g}, end {end:g}")
    if steps < SKIP_START + SKIP_END + 5:
        raise UserError(f"--steps {steps}: too few for a suggestion; use at least {SKIP_START + SKIP_END + 5}")
    out = Path(out)
    recipe = copy.deepcopy(recipe)
    recipe.train.mlflow = ""  # a sweep is not an experiment to track
    stage = Stage()
    if weights:
        from .finetune import read_source
        src = read_source(weights, arch or recipe.model.name, recipe.model.kwargs)
        run = prepare_run(recipe, out, data_dir, arch=src.arch, kwargs=src.kwargs, default_name="lr-find",
                          progress=progress, log=log, mean_std=src.mean_std, pretrained=True,
                          pretrained_size=src.input_size, class_order=src.classes, finetuned_from=src.weights)
        torch.manual_seed(recipe.train.seed)
        model, _ = src.model(list(run.splits.classes))
        f = recipe.finetune
        strategy = "linear-probe" if f.strategy == "two-stage" else f.strategy
        frozen = apply_strategy(model, strategy, f.unfreeze_stages, f.freeze_bn_stats and f.strategy != "two-stage")
        scales = stage_lr_scales(model, f.layer_decay) if strategy != "linear-probe" else None
        stage = Stage("", scales, frozen)
        what = f"fine-tuning {src.arch} ({strategy}{', stage 1 of two-stage' if f.strategy == 'two-stage' else ''})"
    else:
        m = recipe.model
        run = prepare_run(recipe, out, data_dir, arch=m.name, kwargs=m.kwargs, default_name="lr-find",
                          progress=progress, log=log)
        torch.manual_seed(recipe.train.seed)
        model = build_model(m.name, len(run.splits.classes), m.kwargs)
        init_from_training_images(model, run.splits, recipe.train.seed)
        what = f"{m.name}"
    log(f"lr sweep: {what}, {count_params(model, trainable_only=True):,} trainable params, {recipe.optim.name}, "
        f"batch {recipe.train.batch_size}, {start:g} to {end:g} in up to {steps} steps")
    trainer = Trainer(model, recipe, run.train, None, run.ctx, stage)
    result = sweep(trainer, start, end, steps, progress)
    csv_path, png = write_sweep(result, out, f"{recipe.name}: {what}")
    log(f"sweep: {len(result.lrs)} steps, {result.stopped}; smoothed loss lowest at {result.minimum:.3g}"
        if result.minimum is not None else f"sweep: {len(result.lrs)} steps, {result.stopped}")
    log(f"curve: {png}  data: {csv_path}")
    return result
