"""`resnetlab tune`: hyperparameter search over any recipe key, on Optuna.

Each trial is a normal run folder (`<study folder>/trial-NNNN`, its recipe inside its checkpoints) made
by the same code as `train` / `finetune`; the objective is the best validation top-1 of the trial's
final stage — the test split is never read for a decision. Bad trials are pruned after each epoch
(median or successive halving). The study lives in Optuna storage (an SQLite file in the study folder
by default, or an RDB URL such as PostgreSQL for several machines): several processes can work on one
study, and a study that was interrupted continues when `tune` runs again — a trial whose process died
is marked failed by Optuna's heartbeat and its parameters are tried again.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import RunInterrupted, UserError
from .files import atomic_write_text
from .models import get_spec
from .training.config import Recipe, load_recipe, load_yaml, recipe_key
from .training.engine import EpochRow

PRUNERS = ("median", "halving", "none")


@dataclass
class Param:
    key: str
    kind: str            # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_key(key: str, base: Recipe, where: str) -> None:
    """A dotted recipe key, or model.kwargs.<argument the recipe's model declares>."""
    if key.startswith("model.kwargs."):
        arg = key.split(".", 2)[2]
        spec = get_spec(base.model.name)
        if arg not in spec.args:
            raise UserError(f"{where}: {key}: {base.model.name} has no argument {arg!r}; allowed: "
                            f"{', '.join(spec.args)}")
        return
    try:
        recipe_key(key)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def load_space(path: str | Path, base: Recipe) -> list[Param]:
    """The search space: `key: {low, high[, log][, type: int]}` or `key: {choices: [...]}`, per key."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such search-space file")
    try:
        data = load_yaml(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{p}: expected a mapping of recipe keys to ranges, e.g. 'optim.lr: {{low: 0.001, "
                        f"high: 0.1, log: true}}'")
    space = []
    for key, spec in data.items():
        where = f"{p}: {key}"
        if not isinstance(key, str):
            raise UserError(f"{p}: keys must be dotted recipe keys, got {key!r}")
        _check_key(key, base, str(p))
        if not isinstance(spec, dict):
            raise UserError(f"{where}: expected {{low, high}} or {{choices: [...]}}, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "type", "choices"}
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(map(str, sorted(unknown)))}; use low, high, log, "
                            f"type (float | int) or choices")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{where}: choices must be a non-empty list")
            space.append(Param(key, "categorical", choices=choices))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not (_is_number(low) and _is_number(high)):
            raise UserError(f"{where}: low and high must be numbers, got low={low!r} high={high!r}")
        if not low < high:
            raise UserError(f"{where}: empty range (low {low} must be below high {high})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{where}: log must be true or false")
        if log and low <= 0:
            raise UserError(f"{where}: a log range needs low > 0, got {low}")
        kind = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) and not log else "float")
        if kind not in ("float", "int"):
            raise UserError(f"{where}: type must be float or int, got {kind!r}")
        space.append(Param(key, kind, float(low), float(high), log))
    return space


def trial_recipe(recipe_path: str | None, overrides: list[str], params: dict[str, Any]) -> Recipe:
    """The recipe of a trial: the base recipe, the user's overrides, then the sampled values (JSON,
    which YAML reads back exactly). Every value is validated as any recipe's."""
    return load_recipe(recipe_path, list(overrides) + [f"{k}={json.dumps(v)}" for k, v in params.items()])


class _Objective:
    """Runs one trial: a run folder, reports per epoch for pruning, returns best validation top-1."""

    def __init__(self, recipe_path: str | None, overrides: list[str], space: list[Param], study_dir: Path,
                 weights: str | None, data_dir: str | None, log: Callable[[str], None]) -> None:
        self.recipe_path, self.overrides, self.space = recipe_path, overrides, space
        self.study_dir, self.weights, self.data_dir, self.log = study_dir, weights, data_dir, log

    def __call__(self, trial) -> float:
        import optuna
        from .finetune import run_finetune
        from .training.runner import quiet, train_recipe

        params = {p.key: p.suggest(trial) for p in self.space}
        recipe = trial_recipe(self.recipe_path, self.overrides, params)
        out = self.study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(out))
        best: dict[str, float] = {}
        step = [0]

        def on_epoch(prefix: str, row: EpochRow) -> None:
            if row.eval_split != "val" or row.val_top1 is None:
                return  # monitoring on test, or an epoch without evaluation (train.eval_every)
            best[prefix] = max(best.get(prefix, 0.0), row.val_top1)
            trial.report(row.val_top1, step[0])
            step[0] += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"val top-1 {row.val_top1:.4f} at epoch {step[0]}")

        self.log(f"trial {trial.number}: {', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in params.items())}")
        t0 = time.perf_counter()
        try:
            if self.weights:
                recipe.finetune.compare = False  # a comparison probe per trial would double its cost
                run_finetune(self.weights, recipe, out, self.data_dir, progress=False, log=quiet, on_epoch=on_epoch)
            else:
                train_recipe(recipe, out, self.data_dir, progress=False, log=quiet, on_epoch=on_epoch)
        except optuna.TrialPruned:
            self.log(f"trial {trial.number}: pruned after {step[0]} epoch(s)")
            raise
        except RunInterrupted:  # Ctrl-C: the study continues when tune runs again, not the trial's folder
            raise RunInterrupted(f"interrupted during trial {trial.number}; run the same `resnetlab tune` "
                                 f"command again to continue the study") from None
        finally:
            trial.set_user_attr("minutes", (time.perf_counter() - t0) / 60)
        if not best:
            raise UserError("the recipe evaluated no validation split")
        value = best[list(best)[-1]]  # the final stage's best validation top-1: the model the trial produces
        self.log(f"trial {trial.number}: val top-1 {value:.4f} ({(time.perf_counter() - t0) / 60:.1f} min)")
        return value


def _storage(url: str):
    import warnings

    import optuna
    from optuna import storages
    # heartbeat: a trial whose process stops beating for grace_period seconds (killed, machine lost) is
    # failed and its parameters tried again once, when a tune process next looks at the study
    grace = int(os.environ.get("RESNETLAB_TUNE_GRACE_S", "60"))
    kwargs: dict[str, Any] = {"heartbeat_interval": max(1, min(10, grace // 2)), "grace_period": grace}
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            kwargs["heartbeat_stale_trial_callback"] = storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        else:
            kwargs["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=1)
        return storages.RDBStorage(url, engine_kwargs=engine, **kwargs)


def tune(recipe_path: str | None, space_path: str, trials: int, study_name: str | None = None,
         storage: str | None = None, timeout_min: float | None = None, out_root: str | Path = "runs/tune",
         weights: str | None = None, data_dir: str | None = None, overrides: list[str] = (),
         pruner: str = "median", seed: int | None = None, log=print) -> Path:
    """Run (or continue) a study; returns its folder (best_recipe.yaml, report.md, trials.csv, PNG)."""
    try:
        import optuna
    except ImportError:
        raise UserError("tune needs Optuna: pip install 'resnetlab[tune]'") from None
    if trials < 1:
        raise UserError(f"--trials must be positive, got {trials}")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}")
    base = load_recipe(recipe_path, list(overrides))
    if not base.data.val_size:
        raise UserError("tune reads the validation split only (never the test split): set data.val_size > 0")
    space = load_space(space_path, base)
    for p in space:  # every corner of the space must make a valid recipe, before any trial runs
        for v in (p.choices or [p.low if p.kind == "float" else int(p.low), p.high if p.kind == "float" else int(p.high)]):
            try:
                trial_recipe(recipe_path, list(overrides), {p.key: v})
            except UserError as e:
                raise UserError(f"{space_path}: {p.key}={v!r} makes an invalid recipe ({e})") from None
    name = study_name or f"{base.name}-{Path(space_path).stem}"
    study_dir = Path(out_root) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the study's own messages; ours say what matters
    prune = {"median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
             "halving": optuna.pruners.SuccessiveHalvingPruner(),
             "none": optuna.pruners.NopPruner()}[pruner]
    study = None
    for attempt in range(6):
        try:
            study = optuna.create_study(study_name=name, storage=_storage(url), direction="maximize",
                                        sampler=optuna.samplers.TPESampler(seed=seed), pruner=prune,
                                        load_if_exists=True)
            break
        except Exception as e:
            # Two processes starting on a new SQLite file race to create its tables (or the study row);
            # the loser finds them made a moment later. Anything that persists is a real error: one line.
            if attempt == 5:
                raise UserError(f"cannot open study storage {url} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0]})") from None
            time.sleep(0.5 * (attempt + 1))
    assert study is not None
    done = len([t for t in study.trials if t.state.is_finished()])
    log(f"study {name} in {url}: {done} finished trial(s) so far; running {trials} more; objective: best "
        f"validation top-1")
    objective = _Objective(recipe_path, list(overrides), space, study_dir, weights, data_dir, log)
    import warnings
    with warnings.catch_warnings():  # Optuna's (experimental features, sampler notes) are not the user's business
        warnings.filterwarnings("ignore", module=r"optuna(\.|$)")
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=trials, timeout=timeout_min * 60 if timeout_min else None,
                       catch=(UserError,))
        write_report(study, study_dir, recipe_path, list(overrides), log)
    return study_dir


IMPORTANCE_MIN_TRIALS = 5  # below this, parameter importances are noise and the report shows none
IMPORTANCE_NAME = "PED-ANOVA: Optuna's PedAnovaImportanceEvaluator"  # (fANOVA would need scikit-learn)


def write_report(study, study_dir: Path, recipe_path: str | None, overrides: list[str], log=print) -> None:
    """best_recipe.yaml, trials.csv, report.md (table, importances) and objective.png."""
    import optuna
    trials = study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    rows = ["| trial | state | val top-1 | minutes | " + " | ".join(trials[0].params) + " |" if trials else "",
            "|---|---|---|---|" + "---|" * (len(trials[0].params) if trials else 0)]
    csv = ["number,state,value,minutes," + ",".join(trials[0].params) if trials else ""]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else ""
        minutes = f"{t.user_attrs.get('minutes', float('nan')):.2f}"
        vals = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in t.params.values()]
        rows.append(f"| {t.number} | {t.state.name.lower()} | {value} | {minutes} | " + " | ".join(vals) + " |")
        csv.append(f"{t.number},{t.state.name.lower()},{value},{minutes}," + ",".join(vals))
    atomic_write_text(study_dir / "trials.csv", "\n".join(csv) + "\n")
    lines = [f"# Study {study.study_name}", "", f"{len(trials)} trials: {len(complete)} complete, "
             f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)} pruned. Objective: best validation "
             f"top-1 of the trial's final stage.", ""] + rows
    if complete:
        best = study.best_trial
        recipe = trial_recipe(recipe_path, overrides, best.params)
        recipe_dict = recipe.to_dict()
        atomic_write_text(study_dir / "best_recipe.yaml",
                          f"# best of study {study.study_name}: trial {best.number}, validation top-1 {best.value:.4f}\n"
                          + yaml.safe_dump(recipe_dict, sort_keys=False))
        lines += ["", f"Best: trial {best.number}, validation top-1 {best.value:.4f} — `best_recipe.yaml`, run "
                  f"folder `{best.user_attrs.get('run_dir')}`."]
        if len(complete) >= IMPORTANCE_MIN_TRIALS and len(best.params) >= 1:
            try:
                evaluator = optuna.importance.PedAnovaImportanceEvaluator()
                imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
                lines += ["", f"| key | importance ({IMPORTANCE_NAME}) |", "|---|---|"] + [
                    f"| {k} | {v:.3f} |" for k, v in imp.items()]
            except (RuntimeError, ValueError) as e:
                lines += ["", f"(importances not computed: {e})"]
        elif best.params:
            lines += ["", f"(no parameter importances: they need at least {IMPORTANCE_MIN_TRIALS} complete trials, "
                          f"this study has {len(complete)})"]
        _plot(trials, study_dir / "objective.png")
        lines += ["", "![objective over trials](objective.png)"]
        log(f"best: trial {best.number} val top-1 {best.value:.4f}; {study_dir / 'best_recipe.yaml'}")
    atomic_write_text(study_dir / "report.md", "\n".join(lines) + "\n")
    log(f"report: {study_dir / 'report.md'}")


def _plot(trials, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    done = [(t.number, t.value) for t in trials if t.value is not None and t.state.name == "COMPLETE"]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state.name == "PRUNED" and t.intermediate_values]
    if done:
        ax.plot(*zip(*done), "o", label="complete")
        best, curve = -1.0, []
        for n, v in sorted(done):
            best = max(best, v)
            curve.append((n, best))
        ax.step(*zip(*curve), where="post", label="best so far")
    if pruned:
        ax.plot(*zip(*pruned), "x", color="grey", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation top-1")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
