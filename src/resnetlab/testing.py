"""Helpers for programs that test resnetlab as users meet it: our test suite, the benchmarks, a user's own
integration tests. Not used by the library itself.

- `ServeProcess`: a real `resnetlab serve` in a child process on a free loopback port (its signal handling,
  port binding and batching thread, not an in-process app). Standard library only.
- `webp_bomb`: a lossless WebP of a few dozen bytes that decodes to side x side pixels (PIL).
- `write_cifar10_binary`: images in CIFAR-10's official binary layout, so that data made elsewhere (synthetic
  images, random bytes for a smoke test, a user's own 32x32 set) goes through the reader the real files do.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .data.cifar import _LAYOUT, CIFAR10_CLASSES, IMAGE_BYTES


def webp_bomb(side: int) -> bytes:
    """A lossless WebP of a few dozen bytes that decodes to side x side black pixels (34 bytes at 6300)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (another process could still take it before the server binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServeProcess:
    """Starts `python -m resnetlab serve CHECKPOINT --port P *extra` (no CHECKPOINT when None: `--models DIR` in
    extra) and waits until /readyz answers 200.

    capture=True keeps the server's output (returned by stop()); use it only with quiet servers
    (--no-access-log), as nothing reads the pipe while the server runs. `command` is how resnetlab is started
    (another environment's `.../bin/resnetlab`, say); `cwd` and `env` are the child's.
    """

    def __init__(self, checkpoint: str | Path | None, *extra: str, timeout: float = 60, capture: bool = True,
                 command: tuple[str, ...] = (sys.executable, "-m", "resnetlab"), cwd: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        self.proc = subprocess.Popen([*command, "serve", *([] if checkpoint is None else [str(checkpoint)]),
                                      "--port", str(self.port),
                                      "--no-access-log", *extra],
                                     stdout=out, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resnetlab serve exited early ({self.proc.returncode}): "
                                   f"{self.proc.stdout.read() if capture else 'output not captured'}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"resnetlab serve on {self.url} not ready after {timeout:.0f} s")

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM (graceful: requests in flight are answered), then wait; (exit code, captured output)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out or ""


def write_cifar10_binary(root: str | os.PathLike, train: tuple[np.ndarray, np.ndarray],
                         test: tuple[np.ndarray, np.ndarray], classes: list[str] | None = None) -> Path:
    """Write images in CIFAR-10's official binary layout under root/cifar-10-batches-bin.

    Why: data made elsewhere (the tests' synthetic images, the GPU smoke test's random bytes, a user's own
    32x32 set) then goes through the very reader the real files do. `train` and `test` are (uint8 N x 3 x 32 x
    32, labels 0-9); the training images are split over data_batch_1..5 in order, as the official files are.
    """
    folder = Path(root) / _LAYOUT["cifar10"]["bin"][0]
    folder.mkdir(parents=True, exist_ok=True)
    train_parts = np.array_split(np.arange(len(train[1])), 5)
    files = [(f"data_batch_{i + 1}.bin", train[0][idx], train[1][idx]) for i, idx in enumerate(train_parts)]
    files.append(("test_batch.bin", test[0], test[1]))
    for name, images, labels in files:
        images = np.asarray(images, dtype=np.uint8).reshape(len(labels), IMAGE_BYTES)
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{name}: CIFAR-10 labels must be 0-9, got {labels.min()}..{labels.max()}")
        records = np.concatenate([labels.astype(np.uint8)[:, None], images], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(classes or CIFAR10_CLASSES) + "\n")
    return folder
