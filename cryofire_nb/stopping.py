"""A stop request reaching long loops outside the training loop.

The pose search and the heterogeneous refinement run for minutes to hours between two
training steps. They call :func:`check` between batches; while a command watches for
signals (:func:`cryofire_nb.train.interrupt.stop_on_signals`), a pending SIGINT or
SIGTERM makes :func:`check` raise :class:`StageStopped`, and the caller keeps what it had
before the stage began. Without a watcher :func:`check` does nothing.
"""

from __future__ import annotations

from typing import Callable


class StageStopped(Exception):
    """A long stage was left part-way because a stop was requested."""


_requested: Callable[[], bool] | None = None


def watch(requested: Callable[[], bool] | None) -> Callable[[], bool] | None:
    """Make :func:`check` ask ``requested()``; returns the previous watcher (None: none)."""
    global _requested
    before, _requested = _requested, requested
    return before


def requested() -> bool:
    """Whether a stop was requested (always False without a watcher)."""
    return _requested is not None and bool(_requested())


def check() -> None:
    """Raise :class:`StageStopped` if a stop was requested."""
    if requested():
        raise StageStopped()
