"""SIGTERM stops a run as Ctrl-C does. Schedulers (SLURM, Kubernetes, `docker stop`) end jobs with SIGTERM; the
command line turns it into KeyboardInterrupt, so whatever keeps work on Ctrl-C keeps it on SIGTERM too (the
mid-epoch checkpoint and resume command of train, finetune and tune, no half-made run folder or cache), and the
exit status says which signal it was (130 for SIGINT, 143 for SIGTERM)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
received: int | None = None  # the last stop signal this process was asked to stop by, None before any


def note(signum: int) -> None:
    global received
    received = signum


def _interrupt(signum, frame) -> None:
    note(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While inside (on the main thread), SIGTERM raises KeyboardInterrupt as SIGINT does."""
    global received
    received = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_name() -> str:
    return signal.Signals(received or signal.SIGINT).name


def exit_status() -> int:
    """128 + the signal that stopped the run, as a shell reports a process killed by it."""
    return 128 + int(received or signal.SIGINT)
