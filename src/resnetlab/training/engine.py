"""THE training loop. `resnetlab train` and `resnetlab finetune` both run `Trainer.fit`.

Read top to bottom: device/precision choice → Trainer (optimizer, EMA, resume) → fit (epochs of
steps, validation, checkpoints, early stopping) → results. No per-step host syncs: losses and
accuracies accumulate in device tensors and are read only at logging points.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from ..evaluation.metrics import EvalResult, autocast_for, evaluate
from .checkpoint import optimizer_from_flat, optimizer_to_flat, read_full, save_checkpoint
from .config import Recipe
from .optim import EMA, build_optimizer, lr_factor, param_groups


class TrainingDiverged(UserError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


def select_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for 'auto'; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16). Elsewhere oneDNN emulates
    bf16 and it is much slower than fp32 (measured 11x slower on an AVX2-only AMD EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = fp32). 'auto': bf16 on CUDA with bf16 support (else fp16) and on CPUs
    with native bf16; fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise UserError("train.precision fp16 is for CUDA/MPS; on a CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def use_channels_last(setting: str, device: torch.device) -> bool:
    # channels_last measured faster or equal for our nets in fp32 and bf16 on CPU, and on CUDA tensor cores.
    if setting == "auto":
        return device.type in ("cpu", "cuda")
    return setting == "true"


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda{i}"] = s
    return out


class Trainer:
    """Holds model, optimizer, EMA and run folder; `fit` trains for the recipe's epochs."""

    def __init__(self, model: nn.Module, recipe: Recipe, train_loader, val_loader, run_dir: str | Path,
                 meta: dict[str, Any], device: torch.device, amp_dtype: torch.dtype | None,
                 channels_last: bool = False, lr_scales: dict[str, float] | None = None,
                 frozen_bn: Callable[[nn.Module], None] | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, prefix: str = "") -> None:
        self.recipe = recipe
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if recipe.train.compile else self.model
        self.train_loader, self.val_loader = train_loader, val_loader
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.device, self.amp_dtype = device, amp_dtype
        self.frozen_bn = frozen_bn
        self.progress = progress
        self.log = log
        self.prefix = prefix  # checkpoint name prefix for multi-stage runs ("stage1-")
        self.rank, self.world = dist_info()
        self.is_main = self.rank == 0
        self.num_classes = meta["num_classes"]
        self.optimizer = build_optimizer(param_groups(self.model, recipe.optim, lr_scales), recipe.optim)
        self.scaler = (torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda"
                       else None)
        self.ema = EMA(self.model, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None
        self.last_val: EvalResult | None = None  # latest validation, reused when it equals the final test
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None,
                                      "bad_epochs": 0, "elapsed": 0.0, "history": [], "stopped": None}

    # ----------------------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _resume_tensors(self) -> tuple[dict, dict[str, torch.Tensor]]:
        info, tensors = optimizer_to_flat(self.optimizer)
        if self.ema is not None:
            tensors.update({f"ema/{k}": v for k, v in self.ema.module.state_dict().items()})
        tensors.update(_rng_state())
        scaler = self.scaler.state_dict() if self.scaler is not None else None
        return {"trainer": self.state, "optimizer": info, "grad_scaler": scaler}, tensors

    def save(self, name: str, weights: nn.Module, with_resume: bool, metrics: dict) -> Path:
        path = self.run_dir / f"{self.prefix}{name}.safetensors"
        meta = dict(self.meta, metrics=metrics, epoch=self.state["epoch"], step=self.state["step"])
        if with_resume:
            resume, tensors = self._resume_tensors()
            save_checkpoint(path, weights.state_dict(), meta, resume, tensors)
        else:
            save_checkpoint(path, weights.state_dict(), meta)
        return path

    def load_resume(self, path: Path) -> None:
        weights, _meta, resume, extra = read_full(path)
        if resume is None:
            raise UserError(f"{path}: has no resume state (only last.safetensors can be resumed)")
        try:
            self.model.load_state_dict(weights)
            optimizer_from_flat(self.optimizer, resume["optimizer"], extra)
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{path}: does not match this recipe's model/optimizer ({e})") from None
        if self.ema is not None:
            self.ema.module.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema/")})
        if self.scaler is not None and resume.get("grad_scaler"):
            self.scaler.load_state_dict(resume["grad_scaler"])
        torch.set_rng_state(extra["rng/torch"])
        self.state = resume["trainer"]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step (forward under autocast, backward, clip, step, EMA); no host sync."""
        t = self.recipe.train
        with autocast_for(self.device, self.amp_dtype):
            out = self.forward(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=t.label_smoothing)
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

    # ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        r, t = self.recipe, self.recipe.train
        steps_per_epoch = len(self.train_loader)
        if steps_per_epoch == 0:
            raise UserError(f"training set has fewer images than one batch ({t.batch_size}); lower "
                            f"train.batch_size")
        total = t.epochs * steps_per_epoch
        if t.max_steps:
            total = min(total, t.max_steps)
        last_path = self.run_dir / f"{self.prefix}last.safetensors"
        if resume:
            if not last_path.is_file():
                raise UserError(f"{last_path}: nothing to resume (no last checkpoint in {self.run_dir})")
            self.load_resume(last_path)
            self.log(f"resumed {last_path} at epoch {self.state['epoch']}, step {self.state['step']}")
        if self.state["stopped"]:
            self.log(f"run already finished ({self.state['stopped']})")
            return self.state
        base_lr = r.optim.lr
        writer = _tensorboard(self.run_dir) if self.is_main else None
        for epoch in range(self.state["epoch"], t.epochs):
            if self.state["step"] >= total:
                break
            t0 = time.perf_counter()
            self.train_loader.set_epoch(epoch)
            self.model.train()
            if self.frozen_bn:
                self.frozen_bn(self.model)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            seen = 0
            bar = tqdm(total=min(steps_per_epoch, total - self.state["step"]), disable=not (
                self.progress and self.is_main), desc=f"{self.prefix}epoch {epoch + 1}/{t.epochs}",
                leave=False, unit="step")
            for x, y in self.train_loader:
                step = self.state["step"]
                if step >= total:
                    break
                f = lr_factor(step, total, steps_per_epoch, r.schedule)
                for g in self.optimizer.param_groups:
                    g["lr"] = base_lr * g.get("lr_scale", 1.0) * f
                loss, out = self.train_step(x, y)
                loss_sum += loss.detach() * len(y)
                correct += (out.detach().argmax(1) == y).sum()
                seen += len(y)
                self.state["step"] = step + 1
                bar.update(1)
                if self.state["step"] % t.log_every == 0:
                    avg = (loss_sum / seen).item()  # the only host sync, at logging points
                    self._check_finite(avg, epoch)
                    dt = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{avg:.3f}", acc=f"{correct.item() / seen:.3f}",
                                    img_s=f"{seen / dt:.0f}", lr=f"{base_lr * f:.4f}")
            bar.close()
            train_loss = (loss_sum / max(seen, 1)).item()
            self._check_finite(train_loss, epoch)
            train_time = time.perf_counter() - t0
            val = evaluate(self.eval_model, self.val_loader, self.num_classes, tta=False,
                           amp_dtype=self.amp_dtype)
            if not math.isfinite(val.loss):
                self._check_finite(val.loss, epoch)
            self.last_val = val
            self.state["epoch"] = epoch + 1
            self.state["elapsed"] += time.perf_counter() - t0
            row = {"epoch": epoch + 1, "step": self.state["step"], "lr": base_lr * f,
                   "train_loss": train_loss, "train_acc": correct.item() / max(seen, 1),
                   "val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5,
                   "img_per_s": seen * self.world / train_time, "epoch_time_s": time.perf_counter() - t0,
                   "elapsed_s": self.state["elapsed"]}
            self.state["history"].append(row)
            improved = self._early_stopping(row)
            finished = epoch + 1 == t.epochs or self.state["step"] >= total
            if finished and not self.state["stopped"]:
                self.state["stopped"] = "completed"  # recorded in this epoch's `last`, written once
            if self.is_main:
                if improved:
                    self.save("best", self.eval_model, False, {"val": val.summary()})
                self.save("last", self.model, True, {"val": val.summary()})
                self._write_metrics(writer, row)
                self.log(f"{self.prefix}epoch {epoch + 1}/{t.epochs}  loss {train_loss:.4f}  "
                         f"train {row['train_acc']:.4f}  val {val.top1:.4f} (top5 {val.top5:.4f})  "
                         f"{row['img_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s")
            if self.state["stopped"]:
                if self.state["stopped"] != "completed":
                    self.log(self.state["stopped"])
                break
        if writer is not None:
            writer.close()
        return self.state

    def _check_finite(self, value: float, epoch: int) -> None:
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss became {value} at epoch {epoch + 1}, step {self.state['step']}; stopped. The last good "
                f"checkpoint is kept in {self.run_dir}; lower optim.lr or set train.grad_clip")

    def _early_stopping(self, row: dict) -> bool:
        es = self.recipe.train.early_stopping
        value = row[es.metric]
        sign = -1.0 if es.metric == "val_loss" else 1.0
        best = self.state["best"]
        improved = best is None or sign * (value - best) > es.min_delta
        if improved:
            self.state.update(best=value, best_epoch=row["epoch"], bad_epochs=0)
        else:
            self.state["bad_epochs"] += 1
            if es.patience and self.state["bad_epochs"] >= es.patience:
                self.state["stopped"] = (f"early stopping: {es.metric} did not improve by more than "
                                         f"{es.min_delta} for {es.patience} epochs (best {best:.4f} at "
                                         f"epoch {self.state['best_epoch']})")
        return improved

    def _write_metrics(self, writer, row: dict) -> None:
        hist = self.state["history"]
        base = self.run_dir / f"{self.prefix}metrics"
        with open(base.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(hist[0]))
            w.writeheader()
            w.writerows(hist)
        with open(base.with_suffix(".jsonl"), "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in hist)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(f"{self.prefix}{k}", v, row["epoch"])


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.csv/jsonl are always written
        return None
    return SummaryWriter(str(run_dir / "tb"))
