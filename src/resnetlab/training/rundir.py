"""Run folders: where a run writes, claimed so that two runs can never write into the same one.

A run claims its folder with a lock file created exclusively (`.lock`, holding the pid); a second
claimant is refused with one line; a lock whose process is dead is taken over with a message. The lock
is released when the run ends. A run that dies before its first checkpoint removes the folder it
created (nothing half-written is left, and the next default run does not become NAME-2).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UserError
from ..files import pid_alive, sweep_temp_files

LOCK = ".lock"


def next_run_dir(base: Path) -> Path:
    """runs/NAME, or runs/NAME-2, -3, … when taken (like YOLO's runs/train2): re-running never clobbers."""
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}-{n}").exists():
        n += 1
    return base.with_name(f"{base.name}-{n}")




def _make_folder(run_dir: Path) -> bool:
    """Create run_dir (and parents); True when this call created it. One clear line when it cannot."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder; choose another --out")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a parent is a file" if e.errno in (errno.ENOTDIR, errno.EEXIST) else e.strerror
        raise UserError(f"{run_dir}: cannot create the run folder ({reason}); choose another --out") from None
    return created


def _take_lock(run_dir: Path, log: Callable[[str], None]) -> Path:
    lock = run_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise UserError(f"{run_dir}: in use by another run (process {pid}); wait for it or choose "
                                f"another --out") from None
            log(f"{run_dir}: taking over the lock of a run that is gone (process {pid or 'unknown'})")
            lock.unlink(missing_ok=True)
            continue
        except OSError as e:
            raise UserError(f"{run_dir}: cannot write in the run folder ({e.strerror}); choose another --out") \
                from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return lock
    raise UserError(f"{run_dir}: could not claim the run folder; try again")


def has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("*.safetensors"))


def stage_checkpoints(run_dir: Path) -> list[Path]:
    """A fine-tuning run's <stage>-last.safetensors, oldest first (the newest is the stage it stopped in)."""
    return sorted(run_dir.glob("*-last.safetensors"), key=lambda p: p.stat().st_mtime) if run_dir.is_dir() else []


def is_finetune_run(run_dir: Path) -> bool:
    """A fine-tuning run folder (stage checkpoints, no plain last.safetensors): finetune --resume continues it."""
    return not (run_dir / "last.safetensors").is_file() and bool(stage_checkpoints(run_dir))


@contextlib.contextmanager
def claim(run_dir: Path, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold run_dir for one run; see the module docstring."""
    run_dir = Path(run_dir)
    created = _make_folder(run_dir)
    lock = _take_lock(run_dir, log)
    removed = sweep_temp_files(run_dir)
    if removed:
        log(f"{run_dir}: removed {len(removed)} temp file(s) left by an interrupted write")
    ok = False
    try:
        yield run_dir
        ok = True
    finally:
        lock.unlink(missing_ok=True)
        if not ok and created and not has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
