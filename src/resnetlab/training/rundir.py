"""Run folders: where a run writes, chosen without clobbering another run."""
from __future__ import annotations

from pathlib import Path


def next_run_dir(base: Path) -> Path:
    """runs/NAME, or runs/NAME-2, -3, … when taken (like YOLO's runs/train2): re-running never clobbers."""
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}-{n}").exists():
        n += 1
    return base.with_name(f"{base.name}-{n}")
