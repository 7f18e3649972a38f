"""A real `resnetlab serve` in a child process on a free loopback port.

Why: programs that exercise the service as users meet it (our tests, benchmarks/serve.py, a user's own
integration test) need the real process — its signal handling, its port binding, its batching thread — not an
in-process app. Standard library only, so it works without the test or serve extras installed here.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (another process could still take it before the server binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServeProcess:
    """Starts `python -m resnetlab serve CHECKPOINT --port P *extra` and waits until /readyz answers 200.

    capture=True keeps the server's output (returned by stop()); use it only with quiet servers
    (--no-access-log), as nothing reads the pipe while the server runs.
    """

    def __init__(self, checkpoint: str | Path, *extra: str, timeout: float = 60, capture: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "resnetlab", "serve", str(checkpoint), "--port",
                                      str(self.port), "--no-access-log", *extra],
                                     stdout=out, stderr=subprocess.STDOUT, text=True)
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

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
