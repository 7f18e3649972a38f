"""Atomic file writes: a reader (or a kill -9) sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) for a temp file beside `path`, fsync it, then rename it over `path`.

    The temp file is `.NAME.XXXX.tmp` (swept by resume after a crash); it gets the user's normal file
    mode (mkstemp would leave 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove temp files a killed writer left behind: ours (.NAME.XXXX.tmp) and safetensors' (.tmpXXXX)."""
    removed = []
    for p in Path(folder).iterdir():
        if p.is_file() and p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".tmp")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours or someone else's): lock and build files name their owner."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
