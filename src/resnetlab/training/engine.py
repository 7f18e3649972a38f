"""THE training loop. `resnetlab train` and `resnetlab finetune` both run `Trainer.fit`.

Read top to bottom: the state (TrainerState, StopReason) → Trainer (optimizer, EMA, resume) → fit: for each
epoch, `train_epoch` (steps, mid-epoch checkpoints) → `validate` → `end_epoch` (history, early stopping,
checkpoints, metrics files). Losses and accuracies accumulate in device tensors and are read only at logging
points (on CUDA the loader's host-to-device copy of each batch's indices still syncs).
"""
from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import BatchSource
from ..signals import STOP_SIGNALS, note, signal_name
from ..errors import RunInterrupted, UserError
from ..evaluation.metrics import EvalResult, evaluate
from ..evaluation.profile import count_macs, count_train_flops
from ..files import atomic_write_text
from ..models import CheckpointMeta
from ..runtime import all_reduce_sum, autocast_for, barrier, broadcast_flag, dist_context
from ..weights import optimizer_from_flat, optimizer_to_flat, read_full, save_checkpoint
from .distill import Teacher, distill_loss
from .trackers import open_trackers
from .config import Recipe
from .distributed import convert_sync_bn, wrap
from .optim import EMA, Lookahead, build_optimizer, lr_factor, optimizer_step_flops, param_groups


class TrainingDiverged(UserError):
    """Loss became NaN/inf; the message says whether a checkpoint exists to resume from."""


class StopReason(str, enum.Enum):
    COMPLETED = "completed"          # every epoch (or train.max_steps) done
    EARLY_STOPPED = "early_stopped"  # the validation metric stopped improving


@dataclass
class PartialEpoch:
    """Where a mid-epoch checkpoint stopped: steps done and the epoch's sums so far (all ranks)."""
    epoch_step: int
    loss_sum: float
    correct: int
    seen: int
    time: float


@dataclass
class EpochRow:
    """One finished epoch: a row of metrics.csv / metrics.jsonl, a TensorBoard step, what tune's pruner and
    early stopping read, and what the results sum up. Fields added later are None in older runs' rows."""
    epoch: int
    step: int | None = None
    lr: float | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    eval_split: str | None = None    # "val", or "test" when there is no validation split (monitoring only)
    val_loss: float | None = None    # None: an epoch without evaluation (train.eval_every)
    val_top1: float | None = None
    val_top5: float | None = None
    img_per_s: float | None = None   # images of all ranks this epoch over this epoch's wall time
    epoch_time_s: float | None = None
    elapsed_s: float | None = None
    train_pflop: float | None = None

    def metric(self, name: str) -> float | None:
        """An early-stopping metric by its recipe name (val_top1, val_top5, val_loss)."""
        return {"val_top1": self.val_top1, "val_top5": self.val_top5, "val_loss": self.val_loss}[name]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochRow":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainerState:
    """Everything about a run's progress that a checkpoint stores for an exact resume."""
    epoch: int = 0                   # epochs finished
    step: int = 0                    # optimiser steps taken
    best: float | None = None        # best value of the early-stopping metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0
    elapsed: float = 0.0             # seconds of training (not counting final test)
    history: list[EpochRow] = field(default_factory=list)  # one row per finished epoch
    stop: StopReason | None = None
    stop_message: str = ""
    partial: PartialEpoch | None = None
    train_flops: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = self.stop.value if self.stop else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainerState":
        d = dict(d)
        if "stopped" in d:  # checkpoints written before `stop`: None, "completed" or a message
            old = d.pop("stopped")
            d["stop"] = None if old is None else ("completed" if old == "completed" else "early_stopped")
            d.setdefault("stop_message", "" if old in (None, "completed") else old)
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["stop"] = StopReason(d["stop"]) if d.get("stop") else None
        d["partial"] = PartialEpoch(**d["partial"]) if d.get("partial") else None
        d["history"] = [EpochRow.from_dict(h) for h in d.get("history") or []]
        return cls(**d)


@dataclass
class RunContext:
    """Where and how a run trains, as prepare_run decided it (shared by every stage of a run)."""
    run_dir: Path
    meta: CheckpointMeta             # what every checkpoint of the run says of itself
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool = False
    monitor_only: bool = False       # per-epoch figures are on the test split: shown, never selected on
    progress: bool = True
    log: Callable[..., None] = print
    on_epoch: Callable[[str, dict], None] | None = None  # (prefix, the epoch's metrics row) after its checkpoint


@dataclass
class Stage:
    """What differs between the stages of a fine-tuning run."""
    prefix: str = ""                 # checkpoint and metrics file prefix ("stage1-")
    lr_scales: dict[str, float] | None = None  # parameter-name prefix → lr multiplier
    frozen_bn: Callable[[nn.Module], None] | None = None  # re-applied after every model.train()
    train_flops: int | None = None   # per sample, when the model does not train on images (a head on features)


@dataclass
class EpochFigures:
    """One epoch's training figures, summed over every rank."""
    loss: float
    correct: int
    seen: int
    seen_before: int                 # images of this epoch trained before a resume
    time: float                      # seconds since the epoch started (including before a resume)
    time_before: float
    lr: float


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda{i}"] = s
    return out


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N / (C * N_c) per class c (scikit-learn's "balanced"): every class weighs as much in the loss as the others
    together would at its size; a class without training images gets weight 0."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


class _StopRequest:
    """The first Ctrl-C or SIGTERM asks the loop to stop after the current step (it then saves an exact
    mid-epoch checkpoint); a second one interrupts at once. Only in a single process, on the main thread: under
    torchrun every rank would have to agree on the step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopRequest":
        if not dist_context().enabled and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        note(signum)
        self._restore()

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class Trainer:
    """Holds model, optimizer, EMA and run folder; `fit` trains for the recipe's epochs."""

    def __init__(self, model: nn.Module, recipe: Recipe, train_loader: BatchSource, val_loader,
                 ctx: RunContext, stage: Stage | None = None) -> None:
        self.recipe, self.ctx, self.stage = recipe, ctx, stage or Stage()
        self.log, self.prefix = ctx.log, self.stage.prefix
        self.run_dir, self.meta = Path(ctx.run_dir), ctx.meta
        self.device, self.amp_dtype = ctx.device, ctx.amp_dtype
        self.num_classes = ctx.meta.num_classes
        self.dist = dist_context()
        self.model = model.to(ctx.device)
        if ctx.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if self.dist.enabled:  # (the global batch's divisibility by the world size: make_loaders checks it)
            if recipe.train.sync_bn:
                convert_sync_bn(self.model, ctx.device)
            self.forward = wrap(self.model, self.dist, ctx.device, recipe.train.sync_bn)
        if recipe.train.compile:
            self.forward = torch.compile(self.forward)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.optimizer = build_optimizer(param_groups(self.model, recipe.optim, self.stage.lr_scales), recipe.optim)
        self.scaler = (torch.amp.GradScaler("cuda") if ctx.amp_dtype == torch.float16 and ctx.device.type == "cuda"
                       else None)
        d = recipe.train.distill
        self.teacher = Teacher(d.teacher, ctx.meta.classes, ctx.meta.mean, ctx.meta.std, ctx.device,
                               ctx.channels_last) if d.teacher else None
        self.ema = EMA(self.model, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None
        self.class_weight = (balanced_class_weights(train_loader.labels, self.num_classes).to(ctx.device)
                             if recipe.train.class_weights == "balanced" else None)
        la = recipe.train.lookahead_every
        self.lookahead = Lookahead(self.model, la, recipe.train.lookahead_decay) if la else None
        # Training FLOPs per image, counted on a real forward + backward at each image size an epoch trains on
        # (progressive resizing makes early epochs cheaper), once per size, when first needed.
        self._flops_at: dict[int, int] = {}
        self.last_val: EvalResult | None = None  # latest validation, reused when it equals the final test
        self.state = TrainerState()
        self._resume_aug: torch.Tensor | None = None
        self._stop = _StopRequest()

    def release(self) -> None:
        """Drop the distributed wrapper (its gradient hooks), e.g. before another stage wraps the model."""
        if self.forward is not self.model:
            self.forward = self.model
            import gc
            gc.collect()

    def forward_macs(self, size: int, model: nn.Module | None = None) -> int:
        return count_macs(_cpu_copy(model if model is not None else self.model), size)

    def train_flops_per_image(self, size: int) -> int:
        if self.stage.train_flops is not None:
            return self.stage.train_flops
        if size not in self._flops_at:  # a teacher's forward pass is training compute too
            self._flops_at[size] = count_train_flops(_cpu_copy(self.model), size) + (
                self.teacher.flops_per_image() if self.teacher is not None else 0) + (
                optimizer_step_flops(self.optimizer) // self.recipe.train.batch_size)  # Muon's, per image
        return self._flops_at[size]

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_path(self) -> Path:
        return self.run_dir / f"{self.prefix}last.safetensors"

    # ------------------------------------------------------------------------------------- checkpoints
    def _resume_tensors(self, aug_state: torch.Tensor | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        info, tensors = optimizer_to_flat(self.optimizer)
        if aug_state is not None:
            tensors["rng/augment"] = aug_state
        if self.ema is not None:
            tensors.update({f"ema/{k}": v for k, v in self.ema.module.state_dict().items()})
        if self.lookahead is not None:
            tensors.update({f"lookahead/{k}": v for k, v in self.lookahead.slow.items()})
        tensors.update(_rng_state())
        scaler = self.scaler.state_dict() if self.scaler is not None else None
        return {"trainer": self.state.to_dict(), "optimizer": info, "grad_scaler": scaler}, tensors

    def save(self, name: str, weights: nn.Module, with_resume: bool, metrics: dict,
             aug_state: torch.Tensor | None = None) -> Path:
        """Write a checkpoint (rank 0 only: every rank holds the same weights and state)."""
        path = self.run_dir / f"{self.prefix}{name}.safetensors"
        if not self.dist.is_main:
            return path
        meta = self.meta.replace(metrics=metrics, epoch=self.state.epoch, step=self.state.step).to_dict()
        if with_resume:
            resume, tensors = self._resume_tensors(aug_state)
            save_checkpoint(path, weights.state_dict(), meta, resume, tensors)
        else:
            save_checkpoint(path, weights.state_dict(), meta)
        return path

    def load_resume(self, path: Path) -> None:
        weights, _meta, resume, extra = read_full(path)
        if resume is None:
            raise UserError(f"{path}: has no resume state (only last.safetensors can be resumed)")
        try:  # every piece of state the recipe asks for, or one line naming what does not fit
            self.model.load_state_dict(weights)
            optimizer_from_flat(self.optimizer, resume["optimizer"], extra)
            if self.ema is not None:
                self.ema.module.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema/")})
            if self.lookahead is not None:
                for k, v in self.lookahead.slow.items():
                    v.copy_(extra[f"lookahead/{k}"])
            state = TrainerState.from_dict(resume["trainer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: does not match this recipe's model/optimizer ({e})") from None
        if self.scaler is not None and resume.get("grad_scaler"):
            self.scaler.load_state_dict(resume["grad_scaler"])
        torch.set_rng_state(extra["rng/torch"])
        cuda_states = [extra[k] for k in sorted(extra) if k.startswith("rng/cuda")]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        self.state = state
        self._resume_aug = extra.get("rng/augment")

    def _resume(self, total: int) -> None:
        if not self.last_path.is_file():
            raise UserError(f"{self.last_path}: nothing to resume (no last checkpoint in {self.run_dir})")
        self.load_resume(self.last_path)
        s, t = self.state, self.recipe.train
        where = f", {s.partial.epoch_step} steps into epoch {s.epoch + 1}" if s.partial else ""
        self.log(f"resumed {self.last_path} at epoch {s.epoch}, step {s.step}{where}")
        if s.stop is StopReason.COMPLETED and s.step < total and s.epoch < t.epochs:
            s.stop = None  # train.epochs / max_steps were raised: extend the run

    # ------------------------------------------------------------------------------------- one step
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step (forward under autocast, backward, clip, step, EMA); no host sync."""
        t = self.recipe.train
        with autocast_for(self.device, self.amp_dtype):
            out = self.forward(x)
            soft = self.teacher.logits(x) if self.teacher is not None else None
        if soft is None:
            loss = F.cross_entropy(out.float(), y, weight=self.class_weight, label_smoothing=t.label_smoothing)
        else:
            loss = distill_loss(out.float(), soft, y, t.distill.alpha, t.distill.temperature, t.label_smoothing,
                                self.class_weight)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss, out

    # ------------------------------------------------------------------------------------- the loop
    def total_steps(self) -> int:
        t = self.recipe.train
        steps_per_epoch = len(self.train_loader)
        if steps_per_epoch == 0:
            raise UserError(f"training set has fewer images than one batch ({t.batch_size}); lower "
                            f"train.batch_size")
        total = t.epochs * steps_per_epoch
        return min(total, t.max_steps) if t.max_steps else total

    def fit(self, resume: bool = False) -> TrainerState:
        total = self.total_steps()
        if resume:
            self._resume(total)
        if self.state.stop:
            self.log(f"run already finished ({self.state.stop_message or self.state.stop.value})")
            return self.state
        epochs = self.recipe.train.epochs
        trackers = open_trackers(self.run_dir, self.recipe.train.mlflow, self.recipe.to_dict()) \
            if self.dist.is_main else []
        try:
            with self._stop:
                for epoch in range(self.state.epoch, epochs):
                    if self.state.step >= total:
                        break
                    figures = self.train_epoch(epoch, total)
                    finished = epoch + 1 == epochs or self.state.step >= total
                    val = self.validate(epoch, finished)
                    self.end_epoch(epoch, figures, val, finished)
                    for tracker in trackers:
                        tracker.log_epoch(self.prefix, self.state.history[-1])
                    if self.state.stop:
                        if self.state.stop is not StopReason.COMPLETED:
                            self.log(self.state.stop_message)
                        break
        finally:
            for tracker in trackers:
                tracker.close()
        return self.state

    def train_epoch(self, epoch: int, total: int) -> EpochFigures:
        """Train one epoch (or its rest, after a mid-epoch resume); writes mid-epoch checkpoints when due and
        on Ctrl-C (then raises RunInterrupted)."""
        t, base_lr = self.recipe.train, self.recipe.optim.lr
        steps_per_epoch = len(self.train_loader)
        partial = self.state.partial
        start = partial.epoch_step if partial else 0
        self.train_loader.set_epoch(epoch, start, self._resume_aug if start else None)
        self._resume_aug = None
        t0 = time.perf_counter() - (partial.time if partial else 0.0)
        last_save = time.perf_counter()
        every_s = t.checkpoint_every_min * 60
        self.model.train()
        if self.stage.frozen_bn:
            self.stage.frozen_bn(self.model)
        # Sums over the epoch so far. A mid-epoch checkpoint stores global (all-rank) sums: on resume
        # rank 0 starts from them and the others from zero, so the all-rank sum stays right.
        mine = self.dist.is_main and partial is not None
        loss_sum = torch.full((), partial.loss_sum if mine else 0.0, device=self.device)
        correct = torch.full((), partial.correct if mine else 0, dtype=torch.long, device=self.device)
        seen = partial.seen if mine else 0
        epoch_step = start
        bar = tqdm(total=min(steps_per_epoch, total - self.state.step + start), initial=start,
                   disable=not (self.ctx.progress and self.dist.is_main), leave=False, unit="step",
                   desc=f"{self.prefix}epoch {epoch + 1}/{t.epochs}")
        f = lr_factor(self.state.step, total, steps_per_epoch, self.recipe.schedule)
        for x, y in self.train_loader:
            step = self.state.step
            if step >= total:
                break
            f = lr_factor(step, total, steps_per_epoch, self.recipe.schedule)
            for g in self.optimizer.param_groups:
                g["lr"] = base_lr * g.get("lr_scale", 1.0) * f
            loss, out = self.train_step(x, y)
            if self.lookahead is not None:
                self.lookahead.update(self.model, step + 1, total)
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            epoch_step += 1
            self.state.step = step + 1
            bar.update(1)
            if self.state.step % t.log_every == 0:
                g_loss, g_correct, g_seen = self._global(loss_sum, correct, seen)  # host sync: log points only
                self._check_finite(g_loss / g_seen, epoch)
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{g_loss / g_seen:.3f}", acc=f"{g_correct / g_seen:.3f}",
                                img_s=f"{g_seen / dt:.0f}", lr=f"{base_lr * f:.4f}")
            mid_epoch = epoch_step < steps_per_epoch and self.state.step < total
            due = every_s and mid_epoch and broadcast_flag(time.perf_counter() - last_save >= every_s)
            if due or (self._stop.requested and mid_epoch):
                # Mid-epoch checkpoint: the data order is a function of (seed, epoch) and the augmentation
                # generator's state is saved, so a resume from here continues this very epoch exactly.
                g_loss, g_correct, g_seen = self._global(loss_sum, correct, seen)
                self._check_finite(g_loss / g_seen, epoch)
                self.state.partial = PartialEpoch(epoch_step, g_loss, g_correct, g_seen, time.perf_counter() - t0)
                self.save("last", self.model, True, {}, aug_state=self.train_loader.aug_state())
                self.state.partial = None
                last_save = time.perf_counter()
                if self._stop.requested:
                    bar.close()
                    raise RunInterrupted(f"interrupted ({signal_name()}) at epoch {epoch + 1}, step "
                                         f"{self.state.step}; saved {self.last_path}")
        bar.close()  # (a stop request on the epoch's last step: end_epoch writes its checkpoint, then stops)
        g_loss, g_correct, g_seen = self._global(loss_sum, correct, seen)
        self._check_finite(g_loss / max(g_seen, 1), epoch)
        return EpochFigures(g_loss, g_correct, g_seen, partial.seen if partial else 0, time.perf_counter() - t0,
                            partial.time if partial else 0.0, base_lr * f)

    def validate(self, epoch: int, finished: bool) -> EvalResult | None:
        """Evaluate the weights that would be saved. eval_every thins out monitoring on test only: a
        validation split is evaluated after every epoch, as checkpoint selection, early stopping and tune's
        pruning read it."""
        if not (finished or not self.ctx.monitor_only or (epoch + 1) % self.recipe.train.eval_every == 0):
            return None
        val = evaluate(self.eval_model, self.val_loader, self.num_classes, tta=False, amp_dtype=self.amp_dtype)
        if not math.isfinite(val.loss):
            self._check_finite(val.loss, epoch)
        self.last_val = val
        return val

    def end_epoch(self, epoch: int, e: EpochFigures, val: EvalResult | None, finished: bool) -> None:
        """Record the epoch: history row, early stopping, `best` and `last` checkpoints, metrics files, log."""
        s = self.state
        size = self.train_loader.epoch_size(epoch) or self.meta.input_size
        s.train_flops += e.seen * self.train_flops_per_image(size)
        s.epoch, s.partial = epoch + 1, None
        s.elapsed += e.time - e.time_before
        row = EpochRow(epoch=epoch + 1, step=s.step, lr=e.lr, train_loss=e.loss / max(e.seen, 1),
                       train_acc=e.correct / max(e.seen, 1), eval_split="test" if self.ctx.monitor_only else "val",
                       val_loss=val.loss if val else None, val_top1=val.top1 if val else None,
                       val_top5=val.top5 if val else None,
                       img_per_s=(e.seen - e.seen_before) / max(e.time - e.time_before, 1e-9),
                       epoch_time_s=e.time, elapsed_s=s.elapsed, train_pflop=s.train_flops / 1e15)
        s.history.append(row)
        improved = False if (self.ctx.monitor_only or val is None) else self._early_stopping(row)
        if finished and not s.stop:
            s.stop = StopReason.COMPLETED  # recorded in this epoch's `last`, written once
        if improved:
            self.save("best", self.eval_model, False, {"val": val.summary()})
        self.save("last", self.model, True, {"val": val.summary()} if val else {})
        if self.dist.is_main:
            self._write_metrics()
        barrier()  # the others wait until rank 0 has written this epoch's files
        label = "test (monitoring)" if self.ctx.monitor_only else "val"
        seen_text = f"  {label} {val.top1:.4f} (top5 {val.top5:.4f})" if val else ""
        self.log(f"{self.prefix}epoch {epoch + 1}/{self.recipe.train.epochs}  loss {row.train_loss:.4f}  "
                 f"train {row.train_acc:.4f}{seen_text}  {row.img_per_s:.0f} img/s  {row.epoch_time_s:.1f}s")
        if self.ctx.on_epoch is not None:
            self.ctx.on_epoch(self.prefix, row)
        if self._stop.requested and not s.stop:
            raise RunInterrupted(f"interrupted ({signal_name()}) after epoch {epoch + 1}; saved "
                                 f"{self.last_path}")

    # ------------------------------------------------------------------------------------- helpers
    def _global(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, int, int]:
        """(loss sum, correct, images) over every rank, as Python numbers."""
        if not self.dist.enabled:
            return loss_sum.item(), int(correct.item()), seen
        t = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                                           device=loss_sum.device)])
        all_reduce_sum(t)
        return float(t[0]), int(t[1]), int(t[2])

    def _check_finite(self, value: float, epoch: int) -> None:
        if not math.isfinite(value):
            last = self.last_path
            kept = (f"the last good checkpoint is kept ({last}, step {self.state.step - 1} or earlier)"
                    if last.is_file() else "no checkpoint had been written yet")
            raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {self.state.step}; "
                                   f"stopped; {kept}; lower optim.lr (allowed on --resume) or set train.grad_clip")

    def _early_stopping(self, row: EpochRow) -> bool:
        es, s = self.recipe.train.early_stopping, self.state
        value = row.metric(es.metric)
        sign = -1.0 if es.metric == "val_loss" else 1.0
        improved = s.best is None or sign * (value - s.best) > es.min_delta
        if improved:
            s.best, s.best_epoch, s.bad_epochs = value, row.epoch, 0
        else:
            s.bad_epochs += 1
            if es.patience and s.bad_epochs >= es.patience:
                s.stop = StopReason.EARLY_STOPPED
                s.stop_message = (f"early stopping: {es.metric} did not improve by more than {es.min_delta} for "
                                  f"{es.patience} epochs (best {s.best:.4f} at epoch {s.best_epoch})")
        return improved

    def _write_metrics(self) -> None:
        hist = [dataclasses.asdict(h) for h in self.state.history]
        base = self.run_dir / f"{self.prefix}metrics"
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(hist[0]))
        w.writeheader()
        w.writerows(hist)
        atomic_write_text(base.with_suffix(".csv"), buf.getvalue())
        atomic_write_text(base.with_suffix(".jsonl"), "".join(json.dumps(h) + "\n" for h in hist))


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)
