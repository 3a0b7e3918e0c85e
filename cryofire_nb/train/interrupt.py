"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop).

:func:`stop_on_signals` installs handlers that only record the signal: no I/O happens in
a handler, because it runs between two bytecodes of whatever the main thread was doing
(possibly in the middle of writing a file). The training loop polls :func:`requested`
between steps and, once a signal came, leaves the loop as if its budget were spent: the
usual final pass writes every output and the checkpoint, and the command exits with
128 + the signal number. The first signal puts the previous handlers back, so a second
Ctrl-C aborts at once (KeyboardInterrupt) and a second SIGTERM ends the process.

Long stages that do not return to the loop (the voxel pose search, the heterogeneous
refinement) are left between two batches (:mod:`cryofire_nb.stopping`): a run stopped in
the search saves a checkpoint from which ``--load`` starts the search again; a run
stopped in the refinement keeps the table it had before it, writes its outputs, and
refines again when resumed. :func:`stage` names the stage for the exit message.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass

from .. import stopping

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    signum: int | None = None  # the first signal received
    stage: str | None = None  # the long stage running when it came (None: between steps)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + int(self.signum) if self.signum is not None else 0


_active: StopRequest | None = None
_stage: str | None = None


def requested() -> StopRequest | None:
    """The pending stop request, or None (also when no handlers are installed)."""
    return _active if _active is not None and _active.signum is not None else None


@contextlib.contextmanager
def stage(name: str):
    """Mark a stage that cannot be stopped part-way (for the exit message)."""
    global _stage
    before, _stage = _stage, name
    try:
        yield
    finally:
        _stage = before


@contextlib.contextmanager
def stop_on_signals(signals=SIGNALS):
    """Record SIGINT / SIGTERM in the yielded :class:`StopRequest` instead of dying.

    Handlers can only be installed from the main thread; elsewhere (a worker thread, a
    notebook's background job) this does nothing and the signals keep their handlers."""
    global _active
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread() or _active is not None:
        yield req
        return
    # A signal already ignored stays ignored (the convention for jobs started in the
    # background, where Ctrl-C in the terminal is meant for the foreground job only).
    previous = {s: h for s in signals if (h := signal.getsignal(s)) is not signal.SIG_IGN}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    def handler(signum, frame):  # noqa: ARG001 - the signal module's signature
        if req.signum is None:
            req.signum, req.stage = signum, _stage
        restore()  # a second signal acts at once

    for s in previous:
        signal.signal(s, handler)
    _active = req
    watcher_before = stopping.watch(lambda: req.signum is not None)
    try:
        yield req
    finally:
        _active = None
        stopping.watch(watcher_before)
        restore()
