"""Experiment trackers beside metrics.csv/jsonl (always written): TensorBoard (runs/X/tb, whenever TensorBoard is
installed) and MLflow (train.mlflow: off unless set; "local" is an SQLite store beside the run folders, so nothing
leaves the machine unless the user names a server).

A tracker takes each finished epoch's row and, at the end, the run's results; every stage of a fine-tuning run
logs into the same tracker run, its figures named with the stage's prefix."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from ..files import atomic_write_text
from .config import flatten_recipe

EpochRow = Any  # engine.EpochRow (a dataclass); the engine imports this module, so not imported here

MLFLOW_RUN_FILE = "mlflow.json"  # in the run folder: the MLflow run it logs into (a resume continues it)


class Tracker(Protocol):
    def log_epoch(self, prefix: str, row: EpochRow) -> None: ...

    def close(self) -> None: ...


def _numbers(prefix: str, row: EpochRow) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in dataclasses.asdict(row).items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log_epoch(self, prefix: str, row: EpochRow) -> None:
        for k, v in _numbers(prefix, row).items():
            self.writer.add_scalar(k, v, row.epoch)

    def close(self) -> None:
        self.writer.close()


def mlflow_uri(setting: str, run_dir: Path) -> str:
    """train.mlflow as a tracking URI: "local" is sqlite:///<the run folder's parent>/mlflow.db."""
    if setting == "local":
        return f"sqlite:///{(run_dir.resolve().parent / 'mlflow.db')}"
    return setting


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError("train.mlflow needs MLflow: pip install 'resnetlab[mlflow]' (or set train.mlflow to '')") \
            from None


class MLflow:
    """One MLflow run per run folder (its id kept in mlflow.json there): the recipe as parameters, each epoch's
    figures as metrics at that epoch, the results at the end."""

    def __init__(self, setting: str, run_dir: Path, recipe: dict[str, Any]) -> None:
        require_mlflow()
        import logging

        from mlflow.tracking import MlflowClient
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its table-creation notes are not the user's
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=mlflow_uri(setting, run_dir))
        kept = run_dir / MLFLOW_RUN_FILE
        self.run_id = _kept_run(kept)
        if self.run_id is None:
            name = str(recipe.get("name") or "resnetlab")
            exp = self.client.get_experiment_by_name(name)
            # "local": artifacts beside the store, never in whatever folder the command ran from
            where = (run_dir.resolve().parent / "mlartifacts").as_uri() if setting == "local" else None
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name, where)
            run = self.client.create_run(exp_id, run_name=run_dir.name,
                                         tags={"resnetlab.run_dir": str(run_dir.resolve())})
            self.run_id = run.info.run_id
            self._params(recipe)
            atomic_write_text(kept, json.dumps({"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}))

    def _params(self, recipe: dict[str, Any]) -> None:
        from mlflow.entities import Param
        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000])
                  for k, v in flatten_recipe(recipe).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_epoch(self, prefix: str, row: EpochRow) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, row.epoch)
                                                    for k, v in _numbers(prefix, row).items()])

    def log_results(self, prefix: str, results: dict[str, Any], files: list[Path]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        test = results.get("test", {})
        metrics = [Metric(f"{prefix}test_{k}", float(v), now, 0) for k, v in test.items()
                   if isinstance(v, (int, float))]
        metrics += [Metric(f"{prefix}{k}", float(results[k]), now, 0)
                    for k in ("train_time_min", "train_pflop", "params", "macs") if isinstance(results.get(k), (int, float))]
        self.client.log_batch(self.run_id, metrics=metrics)
        for f in files:
            if f.is_file():
                self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self) -> None:
        pass


def _kept_run(path: Path) -> str | None:
    try:
        run_id = json.loads(path.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id.isalnum() else None


def open_trackers(run_dir: Path, mlflow: str, recipe: dict[str, Any]) -> list[Tracker]:
    out: list[Tracker] = []
    try:
        out.append(TensorBoard(run_dir))
    except Exception:  # TensorBoard not installed: metrics.csv/jsonl are always written
        pass
    if mlflow:
        out.append(MLflow(mlflow, run_dir, recipe))
    return out
