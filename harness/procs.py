"""Stop signals: the main process decides, loader workers ignore them, Ctrl-C twice aborts.

SLURM signals every process of a job step (SIGUSR2 before a time limit or on preemption,
SIGTERM at the limit), ``timeout`` and ``kill -- -PGID`` signal a whole process group, and a
terminal's Ctrl-C sends SIGINT to the foreground group. DataLoader workers are in that group:
if they died of the signal, the main process would fail on ``worker ... is killed by signal``
instead of checkpointing. So workers ignore the stop signals and the training loop turns them
into a flag it checks at the next step boundary (:class:`StopSignals`). A stage stopped that
way exits with :data:`REQUEUE_EXIT`.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["REQUEUE_EXIT", "STOP_SIGNALS", "Preempted", "StopSignals", "ignore_stop_signals",
           "stop_signals_blocked"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

# EX_TEMPFAIL (sysexits.h): "temporary failure, retry". A stage stopped by a signal after
# writing its checkpoint exits with it, so wrappers can tell "rerun to resume" from a crash;
# SLURM requeues batch jobs that exit with it where slurm.conf lists it in RequeueExit.
REQUEUE_EXIT = 75


class Preempted(RuntimeError):
    """A stop signal (SIGTERM/SIGUSR2/SIGINT) ended training; a checkpoint was written first."""


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: leave stop signals to the main process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Workers may start with them blocked (stop_signals_blocked); what arrived meanwhile is
    # discarded now that the disposition is "ignore".
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold stop signals back while DataLoader workers start; delivered afterwards.

    A worker inherits the signal mask, so a group signal that arrives before its
    ``worker_init_fn`` ran (a spawned worker takes a second to import torch) stays pending in
    it and is then ignored, instead of killing it with the default action.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _say(text: str) -> None:
    # os.write, not print: a handler that prints while the interrupted code is inside a
    # print to the same stream raises "reentrant call".
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class StopSignals:
    """Turns SIGTERM / SIGUSR2 / SIGINT into a flag the loop checks at each step boundary.

    Stopping between steps is what makes the checkpoint consistent (never mid-update). A
    second SIGINT raises ``KeyboardInterrupt`` at once: Ctrl-C twice still kills.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.received is not None:
            _say(f"[train] {name} again: aborting without a checkpoint\n")
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            again = " (Ctrl-C again to abort without one)" if signum == signal.SIGINT else ""
            _say(f"[train] {name}: stopping with a checkpoint after this step{again}\n")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
