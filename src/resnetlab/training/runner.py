"""From a recipe to a finished run: data → model → Trainer.fit → test evaluation → results.json.

Also rebuilds the data of a checkpoint from its metadata (for `eval` and fine-tuning).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..data import (BatchLoader, BatchSource, ImageSet, load_cifar_splits, load_image_folder, resolve_data_root,
                    split_stats)
from ..data.folders import stratified_split, subset
from ..errors import RunInterrupted, UserError
from ..evaluation.metrics import evaluate
from ..evaluation.profile import activation_bytes, count_params
from ..evaluation.report import write_confusion
from ..files import atomic_write_text
from ..models import CheckpointMeta, ClassifierNet, build_model, natural_input_size, read_meta
from ..models.checkpoint import DatasetRef, Resize
from ..preprocessing import normalize
from ..runtime import (barrier, broadcast_flag, broadcast_module, broadcast_str, describe_device, dist_context,
                       init_distributed,
                       refuse_distributed_launch, seed_and_backends, select_device,
                       select_precision, use_channels_last)
from ..signals import signal_name
from ..weights import read_checkpoint, save_checkpoint
from .config import DataConfig, Recipe, flatten_recipe, load_recipe, recipe_from_dict, recipe_yaml, resume_keys
from .distill import teacher_checkpoint
from .engine import RunContext, Trainer, TrainerState
from .features import FeatureSet
from .rundir import claim, is_finetune_run, next_run_dir
from .trackers import MLflow, require_mlflow


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def load_splits(cfg: DataConfig, data_dir: str | None, progress: bool = True,
                mean_std: tuple | None = None, log=print) -> Splits:
    """Train / validation / test ImageSets for a data config; mean/std from the training split
    unless given (pretrained weights bring their own normalisation)."""
    if cfg.dataset == "folder":
        if not cfg.path:
            raise UserError("recipe key data.path: a folder dataset needs the path of its images (a folder, a "
                            ".csv/.jsonl manifest or .tar shards)")
        train, test = load_image_folder(cfg.path, size=cfg.image_size or 32, split=cfg.test_fraction,
                                        seed=cfg.split_seed, strict=cfg.strict, progress=progress,
                                        workers=cfg.workers, log=log)
    else:
        train, test = load_cifar_splits(data_dir, cfg.dataset, cfg.verify, download_missing=True, log=log)
    if cfg.subset:
        train = _slice(train, cfg.subset, cfg.split_seed)
        test = _slice(test, max(cfg.subset // 5, len(test.classes)), cfg.split_seed)
    val = None
    if cfg.val_size:
        frac = cfg.val_size / len(train) if cfg.val_size >= 1 else cfg.val_size
        if not 0 < frac < 1:
            raise UserError(f"recipe key data.val_size: {cfg.val_size} leaves no training images "
                            f"(training split has {len(train)})")
        keep, held = stratified_split(train.labels, frac, cfg.split_seed)
        train, val = subset(train, keep), subset(train, held)
    mean, std = mean_std if mean_std else split_stats(train)
    return Splits(train, val, test, tuple(mean), tuple(std))


IMBALANCE_RATIO = 3.0  # largest / smallest class of the training split that earns a warning


def imbalance_warning(train: ImageSet) -> str | None:
    """One line when the training split's classes are imbalanced (largest / smallest >= IMBALANCE_RATIO): the
    ratio, the smallest classes and what to do; None otherwise."""
    counts = torch.bincount(train.labels, minlength=len(train.classes))
    small, large = int(counts.min()), int(counts.max())
    if not train.classes or large < IMBALANCE_RATIO * max(small, 1):
        return None
    order = counts.argsort()[:3].tolist()
    smallest = ", ".join(f"{train.classes[i]} ({int(counts[i])})" for i in order)
    return (f"the training split is imbalanced: {large} images in its largest class, {small} in its "
            f"smallest ({large / max(small, 1):.1f}x; smallest: {smallest}); consider train.class_weights=balanced "
            f"or data.order=balanced")


def _slice(ds: ImageSet, n: int, seed: int) -> ImageSet:
    if n >= len(ds):
        return ds
    _, held = stratified_split(ds.labels, n / len(ds), seed)
    return subset(ds, held)


# An eval-mode forward holds a few activations at once: its peak resident memory per image (fp32) measured 2.2-5.3x
# the largest activation for resnet20/18/50 at 32-224 px (benchmarks/eval_memory.py; docs/results/data.md).
EVAL_PEAK_PER_ACTIVATION = 6
EVAL_MEMORY_CPU = 1 << 30


def eval_batch_for(requested: int, model: torch.nn.Module, input_size: int, device: torch.device,
                   log=print) -> int:
    """train.eval_batch_size, lowered to what fits the evaluation memory bound at this input size (1 GiB on a
    CPU, or a quarter of the memory available if less; a quarter of the free memory of a GPU), with a line
    saying so. Evaluation's figures do not depend on the batch."""
    per_image = EVAL_PEAK_PER_ACTIVATION * activation_bytes(model, input_size)
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 4
    else:
        budget = min(EVAL_MEMORY_CPU, available_memory() // 4)
    fits = max(1, budget // per_image)
    if fits >= requested:
        return requested
    log(f"evaluation batch: {fits} images instead of train.eval_batch_size {requested} (about "
        f"{per_image / 1e6:.1f} MB per {input_size} px image; bounded at {budget / 1e9:.2f} GB)")
    return fits


def make_loaders(recipe: Recipe, splits: Splits, device: torch.device, channels_last: bool,
                 input_size: int | None = None, eval_batch: int | None = None
                 ) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    """The train, validation and test batch sources; eval_batch (default train.eval_batch_size) for the last
    two."""
    t = recipe.train
    eval_batch = eval_batch or t.eval_batch_size
    # progressive resizing never reaches the last epoch: a short run (train.epochs=1 for a try) still
    # ends on full-size images, the size it is tested at
    a = recipe.data.augment
    aug = dataclasses.replace(a, epoch_sizes=tuple(a.epoch_sizes)[:max(t.epochs - 1, 0)])
    resize = input_size if input_size and input_size != splits.train.image_size else None
    common = dict(mean=splits.mean, std=splits.std, device=device, channels_last=channels_last,
                  image_size=resize)
    ctx = dist_context()
    if ctx.enabled and t.batch_size % ctx.world_size:
        raise UserError(f"train.batch_size {t.batch_size} (the global batch) is not divisible by the "
                        f"{ctx.world_size} processes")
    common["shard"] = (ctx.rank, ctx.world_size)
    train = BatchLoader(splits.train, t.batch_size, train=True, augment=aug, seed=t.seed,
                        order=resolve_order(recipe.data.order, splits.train), **common)
    test = BatchLoader(splits.test, eval_batch, **common)
    val = BatchLoader(splits.val, eval_batch, **common) if splits.val is not None else test
    return train, val, test


def resolve_order(order: str, train: ImageSet) -> str:
    """data.order=auto: quasi-random (chunked, sequential reads) when the training images' storage is bigger
    than the memory available now, else a full shuffle. prepare_run records the choice in the recipe, so a
    resumed run keeps it."""
    if order != "auto":
        return order
    return "quasi-random" if train.images.numel() > available_memory() else "random"


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); unknown systems: no limit."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def model_meta(name: str, kwargs: dict, classes: list[str], mean, std, input_size: int,
               recipe: Recipe | None, decode_size: int | None = None, **extra: Any) -> CheckpointMeta:
    """What a checkpoint needs to be used on its own. `resize` is the preprocessing policy: a file is decoded
    (PIL, squash) to decode_size — the size of the images the model was trained on — then normalised and
    resized to input_size by the same tensor code as in training (resnetlab.preprocessing.model_input)."""
    return CheckpointMeta(arch=name, kwargs=dict(kwargs), num_classes=len(classes), classes=list(classes),
                          mean=list(mean), std=list(std), input_size=input_size,
                          resize=Resize(decode_size or input_size, "squash"),
                          recipe=recipe.to_dict() if recipe else None, **extra)


def setup_runtime(recipe: Recipe, distributed: bool = False) -> tuple[torch.device, torch.dtype | None, bool]:
    """(device, autocast dtype or None, channels_last) for a recipe; seeds torch. distributed: join the
    torchrun job this process was launched in (train, finetune); other commands refuse a multi-process
    launch."""
    t = recipe.train
    if distributed:
        _, device = init_distributed(t.device)
    else:
        refuse_distributed_launch("this command")
        device = select_device(t.device)
    seed_and_backends(t.seed, device, t.deterministic)
    return device, select_precision(t.precision, device), use_channels_last(t.channels_last, device)


def resume_plan(run_dir: Path, data_dir: str | None, overrides: list[str],
                last: Path | None = None) -> tuple[Recipe, str | None]:
    """The recipe and data root to continue run_dir with (from its checkpoint `last`, by default
    last.safetensors): the stored ones, with safe overrides applied and any other change refused with one
    line."""
    last = last or run_dir / "last.safetensors"
    if not last.is_file():
        if is_finetune_run(run_dir):
            raise UserError(f"{run_dir}: a fine-tuning run; continue it with `resnetlab finetune --resume {run_dir}`")
        raise UserError(f"{run_dir}: nothing to resume (no last.safetensors)")
    meta = read_meta(last)  # the tensors are read once, by the trainer
    if not meta.recipe:
        raise UserError(f"{last}: has no recipe; not a resnetlab run")
    if old_folder_split(meta):
        raise UserError(f"{last}: a folder run from before the decoded cache; its splits cannot be rebuilt the "
                        f"same way, so it cannot be resumed exactly: train it again")
    stored = recipe_from_dict(meta.recipe)
    recipe = load_recipe(None, list(overrides), base=stored.to_dict()) if overrides else stored
    before, after = flatten_recipe(stored.to_dict()), flatten_recipe(recipe.to_dict())
    changed = [k for k in after if after[k] != before.get(k)]
    allowed = resume_keys()  # declared on the recipe's fields (resume=True)
    refused = [k for k in changed if k not in allowed]
    if refused:
        raise UserError(f"recipe key {refused[0]} cannot change when resuming (it would make a different "
                        f"experiment); allowed on --resume: {', '.join(allowed)}")
    stored_root = meta.data_ref.data_dir
    return recipe, data_dir or stored_root


@dataclass
class PreparedRun:
    """A run ready to train: its context (folder, device, metadata), data splits and batch sources."""
    ctx: RunContext
    splits: Splits
    train: BatchSource
    val: BatchSource
    test: BatchSource
    resume: bool = False             # continuing the run in run_dir from its checkpoints

    @property
    def run_dir(self) -> Path:
        return self.ctx.run_dir


def input_size_for(recipe: Recipe, arch: str, kwargs: dict, pretrained: bool = False,
                   pretrained_size: int | None = None) -> int:
    """The one place the training input size is decided: data.image_size if set, else the size the pretrained
    weights were trained at, else CIFAR's own 32 px when training CIFAR from scratch, else the model's natural
    size (224 for ImageNet-stem nets: image folders, and weights that do not record a size)."""
    if recipe.data.image_size:
        return recipe.data.image_size
    if pretrained_size:
        return pretrained_size
    if recipe.data.dataset != "folder" and not pretrained:
        return 32
    return natural_input_size(arch, **kwargs)


def prepare_run(recipe: Recipe, out: str | Path | None, data_dir: str | None, *, arch: str, kwargs: dict,
                default_name: str, resume: bool = False, progress: bool = True, log=print, on_epoch=None,
                mean_std: tuple | None = None, pretrained: bool = False, pretrained_size: int | None = None,
                class_order: list[str] | None = None, **extra_meta: Any) -> PreparedRun:
    """Everything `train` and `finetune` share before the model trains: runtime (device, precision, seeds),
    the run folder (runs/<default_name>[-N] when out is None, chosen by rank 0), the input size, the data
    splits (class_order: an earlier head's classes keep their rows, new ones are appended), the batch
    sources and the checkpoint metadata. Everything that can be refused is checked before data is loaded;
    the run folder itself is created later, by `claim`, once there is something to write."""
    device, amp, cl = setup_runtime(recipe, distributed=True)
    dist = dist_context()
    if not dist.is_main:
        log = quiet  # one voice: rank 0 logs and writes; the others compute
    if out is None:
        out = broadcast_str(str(next_run_dir(Path("runs") / default_name)) if dist.is_main else "")
    run_dir = Path(out)
    if not resume:
        refuse_taken(run_dir)
    check_out_dir(run_dir)
    if dist.enabled:
        log(f"distributed: {dist.describe()}, global batch {recipe.train.batch_size} = "
            f"{recipe.train.batch_size // dist.world_size} per process, sync_bn {recipe.train.sync_bn}")
    probe = build_model(arch, 2, kwargs)  # fail in a second on a model that cannot be built, before any data work
    if recipe.train.mlflow:
        require_mlflow()
    if recipe.train.distill.teacher is not None:  # a file or a run folder; the recipe saved names the file
        recipe.train.distill.teacher = str(teacher_checkpoint(recipe.train.distill.teacher))
    input_size = input_size_for(recipe, arch, kwargs, pretrained, pretrained_size)
    if recipe.data.dataset == "folder":
        recipe.data.image_size = input_size  # folders are decoded at the size the net reads (recorded)
    t_load = time.perf_counter()
    splits = load_splits(recipe.data, data_dir, progress and dist.is_main, mean_std=mean_std, log=log)
    if class_order:
        _keep_class_order(splits, class_order)
    log(f"data: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
        f"{len(splits.test)} test images, {len(splits.classes)} classes, mean {splits.mean} std "
        f"{splits.std} ({time.perf_counter() - t_load:.1f}s)")
    if len(splits.train) < recipe.train.batch_size:  # before any feature pass or training step
        raise UserError(f"the training split has {len(splits.train)} images, fewer than one batch "
                        f"(train.batch_size {recipe.train.batch_size}); lower train.batch_size, e.g. "
                        f"train.batch_size={max(1, len(splits.train) // 4)}")
    imbalance = imbalance_warning(splits.train)
    if imbalance and recipe.train.class_weights == "none" and recipe.data.order != "balanced":
        warnings.warn(imbalance, stacklevel=2)  # the command line shows it as one `warning:` line on stderr
    if splits.val is None:
        log("no validation split (data.val_size=0): per-epoch figures are on the test split, for monitoring "
            "only; nothing is selected or stopped on them")
    if recipe.data.order == "auto":
        recipe.data.order = resolve_order("auto", splits.train)
        if recipe.data.order == "quasi-random":
            log(f"data: {splits.train.images.numel() / 1e9:.1f} GB of decoded images is more than the "
                f"{available_memory() / 1e9:.1f} GB of memory available: reading in chunks "
                f"(data.order=quasi-random)")
    eval_batch = eval_batch_for(recipe.train.eval_batch_size, probe, input_size, device, log)
    del probe
    train_l, val_l, test_l = make_loaders(recipe, splits, device, cl, input_size, eval_batch)
    meta = model_meta(arch, kwargs, splits.classes, splits.mean, splits.std, input_size, recipe,
                      decode_size=splits.train.image_size, dataset=data_ref(recipe.data, data_dir),
                      **extra_meta)
    ctx = RunContext(run_dir, meta, device, amp, cl, monitor_only=splits.val is None, progress=progress,
                     log=log, on_epoch=on_epoch)
    return PreparedRun(ctx, splits, train_l, val_l, test_l, resume)


def _keep_class_order(splits: Splits, old: list[str]) -> None:
    """Relabel splits so that the classes of `old` (a pretrained head) keep their indices and new classes
    follow, when the data holds all of old's classes in another order."""
    classes = list(splits.classes)
    if not (set(old) <= set(classes) and old != classes[:len(old)]):
        return
    order = list(old) + [c for c in classes if c not in old]
    remap = torch.tensor([order.index(c) for c in classes])
    for ds in (splits.train, splits.val, splits.test):
        if ds is not None:
            ds.labels = remap[ds.labels]
            ds.classes = order


def refuse_taken(run_dir: Path) -> None:
    if (run_dir / "last.safetensors").exists() or (run_dir / "summary.json").exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")


def write_recipe_file(run: PreparedRun, recipe: Recipe) -> None:
    """recipe.yaml: the resolved recipe, overrides applied (`--recipe runs/X/recipe.yaml` trains it again)."""
    if dist_context().is_main:
        atomic_write_text(run.run_dir / "recipe.yaml", recipe_yaml(recipe))


@contextlib.contextmanager
def interruptible(run_dir: Path, command: str = "train") -> Iterator[None]:
    """Turn Ctrl-C or SIGTERM into one message that says what was kept and the command that continues the run
    (`resnetlab <command> --resume <run_dir>`)."""
    try:
        yield
    except (RunInterrupted, KeyboardInterrupt) as e:
        saved = str(e) if isinstance(e, RunInterrupted) else f"interrupted ({signal_name()})"
        kept = sorted(run_dir.glob("*last.safetensors"), key=lambda p: p.stat().st_mtime)
        if not kept:
            raise RunInterrupted(f"{saved}; no checkpoint had been written yet, so there is nothing to "
                                 f"resume") from None
        if isinstance(e, KeyboardInterrupt):
            saved += f"; the last checkpoint ({kept[-1]}) is kept"
        raise RunInterrupted(f"{saved}\ncontinue with: resnetlab {command} --resume {run_dir}") from None


def init_from_training_images(model: ClassifierNet, splits: Splits, seed: int) -> None:
    """A model's data-dependent initialisation (ResNet-9's whitening filters), from `model.init_images`
    unaugmented training images drawn with `seed`; nothing for models that ask for none."""
    if model.init_images:
        sample = splits.train.take(torch.randperm(len(splits.train), generator=torch.Generator()
                                                  .manual_seed(seed))[:model.init_images])
        model.init_from_data(normalize(sample, torch.tensor(splits.mean), torch.tensor(splits.std)))


def train_recipe(recipe: Recipe | None, out: str | Path | None, data_dir: str | None = None, resume: bool = False,
                 progress: bool = True, log=print, overrides: list[str] = (), on_epoch=None) -> dict[str, Any]:
    """Run a whole training recipe; returns the results dict also written to results.json.

    out None: runs/<recipe name> (or -2, -3, … when taken). resume: continue the run in `out` with its own
    recipe (safe `overrides` applied)."""
    if resume:
        assert out is not None
        recipe, data_dir = resume_plan(Path(out), data_dir, list(overrides))
    assert recipe is not None
    m = recipe.model
    run = prepare_run(recipe, out, data_dir, arch=m.name, kwargs=m.kwargs, default_name=recipe.name,
                      resume=resume, progress=progress, log=log, on_epoch=on_epoch)
    log = run.ctx.log
    torch.manual_seed(recipe.train.seed)
    model = build_model(m.name, len(run.splits.classes), m.kwargs)
    if not resume:
        init_from_training_images(model, run.splits, recipe.train.seed)
    log(f"model: {m.name} {m.kwargs or ''} {count_params(model):,} params; device "
        f"{describe_device(run.ctx.device, run.ctx.amp_dtype)}{', channels_last' if run.ctx.channels_last else ''}")
    main = dist_context().is_main
    with claim(run.run_dir, log) if main else contextlib.nullcontext(), interruptible(run.run_dir):
        if not resume and main:
            refuse_taken(run.run_dir)  # another run finished here meanwhile
        write_recipe_file(run, recipe)
        trainer = Trainer(model, recipe, run.train, run.val, run.ctx)
        state = trainer.fit(resume=resume)
        results = finish_run(trainer, run.splits, run.test, state, log)
    log(f"run folder: {run.run_dir}")
    return results


def quiet(*args: Any, **kwargs: Any) -> None:
    """A log that says nothing (ranks other than 0; tune's trials)."""


def check_out_dir(run_dir: Path) -> None:
    """Refuse, before any work, an output folder that cannot be created: under a file, or not writable."""
    p = run_dir
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UserError(f"{run_dir}: {p} is a file, so the run folder cannot be created there; choose another --out")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{run_dir}: {p} is not writable; choose another --out")


def finish_run(trainer: Trainer, splits: Splits, test_loader, state: TrainerState, log=print,
               unwrap=None, features: FeatureSet | None = None) -> dict[str, Any]:
    """Test the chosen weights and record results: best-on-validation when a validation split exists
    (choosing on test would be cheating), else the final weights. unwrap: the network that reads images,
    given the trainer's model; features: the pooled features a head trained on (their time and FLOPs count as
    training)."""
    run_dir, prefix = trainer.run_dir, trainer.prefix
    # rank 0 decides and holds the file; the others get its weights (no shared file system needed)
    if broadcast_flag(splits.val is not None and (run_dir / f"{prefix}best.safetensors").is_file()):
        if dist_context().is_main:
            weights, _ = read_checkpoint(run_dir / f"{prefix}best.safetensors")
            trainer.eval_model.load_state_dict(weights)
        broadcast_module(trainer.eval_model)
        chosen = f"best on validation (epoch {state.best_epoch})"
    else:
        chosen = "final"
    model = unwrap(trainer.eval_model) if unwrap else trainer.eval_model
    t = trainer.recipe.train
    if chosen == "final" and splits.val is None and trainer.last_val is not None and unwrap is None:
        plain = trainer.last_val  # the last epoch already evaluated these weights on the test split, plainly
    else:
        plain = evaluate(model, test_loader, trainer.num_classes, amp_dtype=trainer.amp_dtype)
    test = evaluate(model, test_loader, trainer.num_classes, tta=True, amp_dtype=trainer.amp_dtype,
                    tta_shift=t.tta_shift) if t.tta else plain
    if not dist_context().is_main:  # rank 0 writes the results; the others took part in the evaluation
        barrier()
        return {"test": test.summary()}
    hist = state.history
    speeds = [h.img_per_s for h in hist[1:]] or [h.img_per_s for h in hist]
    results = {
        "model": trainer.meta.arch, "test": test.summary(), "weights": chosen,
        "params": count_params(model), "macs": trainer.forward_macs(trainer.meta.input_size, model),
        "train_time_min": (state.elapsed + (features.seconds if features else 0.0)) / 60,
        "train_pflop": (hist[-1].train_pflop if hist else 0.0) + (features.flops / 1e15 if features else 0.0),
        "epochs": state.epoch, "steps": state.step,
        "img_per_s": sum(speeds) / max(1, len(speeds)), "device": describe_device(trainer.device, trainer.amp_dtype),
        "stopped": state.stop_message or (state.stop.value if state.stop else None), "per_class": dict(zip(splits.classes, test.per_class())),
    }
    if t.tta:
        results.update(tta=tta_label(t.tta_shift), test_plain=plain.summary())
    if features:
        results.update(feature_s=round(features.seconds, 2), feature_pflop=features.flops / 1e15)
    meta = trainer.meta.replace(metrics={"test": test.summary(), "val_best": state.best}, epoch=state.epoch,
                                step=state.step)
    save_checkpoint(run_dir / f"{prefix}best.safetensors", model.state_dict(), meta.to_dict())
    atomic_write_text(run_dir / f"{prefix}results.json", json.dumps(results, indent=2))
    write_confusion(test, splits.classes, run_dir / f"{prefix}confusion")
    if t.mlflow:
        MLflow(t.mlflow, run_dir, trainer.recipe.to_dict()).log_results(
            prefix, results, [run_dir / f"{prefix}{name}" for name in ("results.json", "confusion.csv", "metrics.csv")])
    views = f" with TTA ({tta_label(t.tta_shift)}; {plain.top1:.4f} without)" if t.tta else ""
    log(f"test ({chosen} weights): top-1 {test.top1:.4f}{views}  top-5 {test.top5:.4f}  loss {test.loss:.4f}  "
        f"[{results['train_time_min']:.1f} min training, {results['train_pflop']:.3f} PFLOP]")
    barrier()
    return results


def tta_label(shift: int) -> str:
    """The test-time views in words (train.tta_shift 0: the image and its mirror)."""
    return f"6 views: flips, +-{shift} px" if shift else "2 views: flips"


def data_ref(cfg: DataConfig, data_dir: str | None) -> DatasetRef:
    """Where the data came from, so eval and resume find it again (absolute paths; the data root as
    resolved at the time: --data-dir, $RESNETLAB_DATA or ./data)."""
    root = str(resolve_data_root(data_dir).resolve()) if cfg.dataset != "folder" else None
    url = cfg.path and cfg.path.startswith(("http://", "https://"))
    path = (cfg.path if url else str(Path(cfg.path).resolve())) if cfg.path else None
    return DatasetRef(dataset=cfg.dataset, path=path, data_dir=root, val_size=cfg.val_size, split_seed=cfg.split_seed,
                      test_fraction=cfg.test_fraction, split=FOLDER_SPLIT if cfg.dataset == "folder" else None)


# How folder splits are drawn: over the rows of the decoded cache (data.cache). Checkpoints of folder runs from
# before the cache lack it: their splits were drawn over the files in scan order and cannot be rebuilt.
FOLDER_SPLIT = "cache-rows-1"


def old_folder_split(meta: CheckpointMeta) -> bool:
    ref = meta.data_ref
    return ref.dataset == "folder" and ref.split != FOLDER_SPLIT
