"""THE training loop. `resnetlab train` and `resnetlab finetune` both run `Trainer.fit`.

Read top to bottom: Trainer (optimizer, EMA, resume) → fit (epochs of steps, validation, checkpoints,
early stopping) → results. Losses and accuracies accumulate in device tensors and are read only at
logging points (on CUDA the loader's host-to-device copy of each batch's indices still syncs).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from ..evaluation.metrics import EvalResult, evaluate
from ..evaluation.profile import count_macs, count_train_flops
from ..files import atomic_write_text
from ..runtime import all_reduce_sum, autocast_for, barrier, broadcast_flag, dist_context
from ..weights import optimizer_from_flat, optimizer_to_flat, read_full, save_checkpoint
from .config import Recipe
from .distributed import convert_sync_bn, wrap
from .optim import EMA, Lookahead, build_optimizer, lr_factor, param_groups


class TrainingDiverged(UserError):
    """Loss became NaN/inf; the message says whether a checkpoint exists to resume from."""


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
                 log: Callable[[str], None] = print, prefix: str = "", monitor_only: bool = False,
                 on_epoch: Callable[[str, dict], None] | None = None) -> None:
        self.recipe = recipe
        self.on_epoch = on_epoch  # called with (prefix, the epoch's metrics row) after its checkpoint (tune)
        # monitor_only: the per-epoch evaluation runs on the test split (no validation split exists), so
        # it is shown but never used to pick a checkpoint or to stop.
        self.monitor_only = monitor_only
        self.dist = dist_context()
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if self.dist.enabled:  # (the global batch's divisibility by the world size: make_loaders checks it)
            if recipe.train.sync_bn:
                convert_sync_bn(self.model, device)
            self.forward = wrap(self.model, self.dist, device, recipe.train.sync_bn)
        if recipe.train.compile:
            self.forward = torch.compile(self.forward)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.device, self.amp_dtype = device, amp_dtype
        self.frozen_bn = frozen_bn
        self.progress = progress
        self.log = log
        self.prefix = prefix  # checkpoint name prefix for multi-stage runs ("stage1-")
        self.num_classes = meta["num_classes"]
        self.optimizer = build_optimizer(param_groups(self.model, recipe.optim, lr_scales), recipe.optim)
        self.scaler = (torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda"
                       else None)
        self.ema = EMA(self.model, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None
        la = recipe.train.lookahead_every
        self.lookahead = Lookahead(self.model, la, recipe.train.lookahead_decay) if la else None
        # Training compute, counted as 3 forward passes per image (forward + a backward of twice its cost,
        # the usual estimate, e.g. Kaplan et al. 2020): 6 FLOPs per multiply-accumulate of one forward.
        # Counted per epoch at the size that epoch trains on (progressive resizing makes early epochs cheaper),
        # once per size, when first needed.
        self._flops_at: dict[int, int] = {}
        self.last_val: EvalResult | None = None  # latest validation, reused when it equals the final test
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None,
                                      "bad_epochs": 0, "elapsed": 0.0, "history": [], "stopped": None,
                                      "partial": None, "train_flops": 0}
        self._resume_aug: torch.Tensor | None = None

    def release(self) -> None:
        """Drop the distributed wrapper (its gradient hooks), e.g. before another stage wraps the model."""
        if self.forward is not self.model:
            self.forward = self.model
            import gc
            gc.collect()

    def forward_macs(self, size: int) -> int:
        return count_macs(_cpu_copy(self.model), size)

    def train_flops_per_image(self, size: int) -> int:
        if size not in self._flops_at:
            self._flops_at[size] = count_train_flops(_cpu_copy(self.model), size)
        return self._flops_at[size]

    # ----------------------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

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
        return {"trainer": self.state, "optimizer": info, "grad_scaler": scaler}, tensors

    def save(self, name: str, weights: nn.Module, with_resume: bool, metrics: dict,
             aug_state: torch.Tensor | None = None) -> Path:
        """Write a checkpoint (rank 0 only: every rank holds the same weights and state)."""
        path = self.run_dir / f"{self.prefix}{name}.safetensors"
        if not self.dist.is_main:
            return path
        meta = dict(self.meta, metrics=metrics, epoch=self.state["epoch"], step=self.state["step"])
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
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{path}: does not match this recipe's model/optimizer ({e})") from None
        if self.scaler is not None and resume.get("grad_scaler"):
            self.scaler.load_state_dict(resume["grad_scaler"])
        torch.set_rng_state(extra["rng/torch"])
        cuda_states = [extra[k] for k in sorted(extra) if k.startswith("rng/cuda")]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        self.state = resume["trainer"]
        self.state.setdefault("partial", None)
        self.state.setdefault("train_flops", 0)
        self._resume_aug = extra.get("rng/augment")

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
            partial = self.state["partial"]
            where = f", {partial['epoch_step']} steps into epoch {self.state['epoch'] + 1}" if partial else ""
            self.log(f"resumed {last_path} at epoch {self.state['epoch']}, step {self.state['step']}{where}")
            if self.state["stopped"] == "completed" and self.state["step"] < total and \
                    self.state["epoch"] < t.epochs:
                self.state["stopped"] = None  # train.epochs / max_steps were raised: extend the run
        if self.state["stopped"]:
            self.log(f"run already finished ({self.state['stopped']})")
            return self.state
        base_lr = r.optim.lr
        every_s = t.checkpoint_every_min * 60
        writer = _tensorboard(self.run_dir) if self.dist.is_main else None
        for epoch in range(self.state["epoch"], t.epochs):
            if self.state["step"] >= total:
                break
            partial = self.state["partial"] or {}
            start = partial.get("epoch_step", 0)
            self.train_loader.set_epoch(epoch, start, self._resume_aug if start else None)
            self._resume_aug = None
            t0 = time.perf_counter() - partial.get("time", 0.0)
            last_save = time.perf_counter()
            self.model.train()
            if self.frozen_bn:
                self.frozen_bn(self.model)
            # Sums over the epoch so far. A mid-epoch checkpoint stores global (all-rank) sums: on resume
            # rank 0 starts from them and the others from zero, so the all-rank sum stays right.
            mine = self.dist.is_main
            loss_sum = torch.full((), partial.get("loss_sum", 0.0) if mine else 0.0, device=self.device)
            correct = torch.full((), partial.get("correct", 0) if mine else 0, dtype=torch.long, device=self.device)
            seen = partial.get("seen", 0) if mine else 0
            epoch_step = start
            bar = tqdm(total=min(steps_per_epoch, total - self.state["step"] + start), initial=start,
                       disable=not (self.progress and mine), leave=False, unit="step",
                       desc=f"{self.prefix}epoch {epoch + 1}/{t.epochs}")
            f = lr_factor(self.state["step"], total, steps_per_epoch, r.schedule)
            for x, y in self.train_loader:
                step = self.state["step"]
                if step >= total:
                    break
                f = lr_factor(step, total, steps_per_epoch, r.schedule)
                for g in self.optimizer.param_groups:
                    g["lr"] = base_lr * g.get("lr_scale", 1.0) * f
                loss, out = self.train_step(x, y)
                if self.lookahead is not None:
                    self.lookahead.update(self.model, step + 1, total)
                loss_sum += loss.detach() * len(y)
                correct += (out.detach().argmax(1) == y).sum()
                seen += len(y)
                epoch_step += 1
                self.state["step"] = step + 1
                bar.update(1)
                if self.state["step"] % t.log_every == 0:
                    g_loss, g_correct, g_seen = self._global(loss_sum, correct, seen)  # host sync: log points only
                    self._check_finite(g_loss / g_seen, epoch)
                    dt = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{g_loss / g_seen:.3f}", acc=f"{g_correct / g_seen:.3f}",
                                    img_s=f"{g_seen / dt:.0f}", lr=f"{base_lr * f:.4f}")
                due = every_s and epoch_step < steps_per_epoch and self.state["step"] < total and \
                    broadcast_flag(time.perf_counter() - last_save >= every_s)  # rank 0's clock decides for all
                if due:
                    # Mid-epoch checkpoint: the data order is a function of (seed, epoch) and the augmentation
                    # generator's state is saved, so a resume from here continues this very epoch exactly.
                    g_loss, g_correct, g_seen = self._global(loss_sum, correct, seen)
                    self._check_finite(g_loss / g_seen, epoch)
                    self.state["partial"] = {"epoch_step": epoch_step, "loss_sum": g_loss,
                                             "correct": g_correct, "seen": g_seen,
                                             "time": time.perf_counter() - t0}
                    self.save("last", self.model, True, {}, aug_state=self.train_loader.aug_state())
                    self.state["partial"] = None
                    last_save = time.perf_counter()
            bar.close()
            g_loss, g_correct, g_seen = self._global(loss_sum, correct, seen)
            train_loss = g_loss / max(g_seen, 1)
            self._check_finite(train_loss, epoch)
            train_time = time.perf_counter() - t0
            size = self.train_loader.epoch_size(epoch) or self.meta["input_size"]
            self.state["train_flops"] += g_seen * self.train_flops_per_image(size)
            finished = epoch + 1 == t.epochs or self.state["step"] >= total
            val = None
            # eval_every thins out monitoring only: a validation split is evaluated after every epoch, as
            # checkpoint selection, early stopping and tune's pruning read it
            if finished or not self.monitor_only or (epoch + 1) % t.eval_every == 0:
                val = evaluate(self.eval_model, self.val_loader, self.num_classes, tta=False,
                               amp_dtype=self.amp_dtype)
                if not math.isfinite(val.loss):
                    self._check_finite(val.loss, epoch)
                self.last_val = val
            self.state["epoch"] = epoch + 1
            self.state["partial"] = None
            self.state["elapsed"] += time.perf_counter() - t0
            row = {"epoch": epoch + 1, "step": self.state["step"], "lr": base_lr * f,
                   "train_loss": train_loss, "train_acc": g_correct / max(g_seen, 1),
                   "eval_split": "test" if self.monitor_only else "val",
                   "val_loss": val.loss if val else None, "val_top1": val.top1 if val else None,
                   "val_top5": val.top5 if val else None,
                   # measured: images of all ranks this epoch over this epoch's wall time
                   "img_per_s": (g_seen - partial.get("seen", 0)) / max(train_time - partial.get("time", 0.0), 1e-9),
                   "epoch_time_s": time.perf_counter() - t0, "elapsed_s": self.state["elapsed"],
                   "train_pflop": self.state["train_flops"] / 1e15}
            self.state["history"].append(row)
            improved = False if (self.monitor_only or val is None) else self._early_stopping(row)
            if finished and not self.state["stopped"]:
                self.state["stopped"] = "completed"  # recorded in this epoch's `last`, written once
            if improved:
                self.save("best", self.eval_model, False, {"val": val.summary()})
            self.save("last", self.model, True, {"val": val.summary()} if val else {})
            if self.dist.is_main:
                self._write_metrics(writer, row)
            barrier()  # the others wait until rank 0 has written this epoch's files
            label = "test (monitoring)" if self.monitor_only else "val"
            seen_text = f"  {label} {val.top1:.4f} (top5 {val.top5:.4f})" if val else ""
            self.log(f"{self.prefix}epoch {epoch + 1}/{t.epochs}  loss {train_loss:.4f}  "
                     f"train {row['train_acc']:.4f}{seen_text}  "
                     f"{row['img_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s")
            if self.on_epoch is not None:
                self.on_epoch(self.prefix, row)
            if self.state["stopped"]:
                if self.state["stopped"] != "completed":
                    self.log(self.state["stopped"])
                break
        if writer is not None:
            writer.close()
        return self.state

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
            last = self.run_dir / f"{self.prefix}last.safetensors"
            kept = (f"the last good checkpoint is kept ({last}, step {self.state['step'] - 1} or earlier)"
                    if last.is_file() else "no checkpoint had been written yet")
            raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {self.state['step']}; "
                                   f"stopped; {kept}; lower optim.lr (allowed on --resume) or set train.grad_clip")

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
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(hist[0]))
        w.writeheader()
        w.writerows(hist)
        atomic_write_text(base.with_suffix(".csv"), buf.getvalue())
        atomic_write_text(base.with_suffix(".jsonl"), "".join(json.dumps(h) + "\n" for h in hist))
        if writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    writer.add_scalar(f"{self.prefix}{k}", v, row["epoch"])


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.csv/jsonl are always written
        return None
    return SummaryWriter(str(run_dir / "tb"))
