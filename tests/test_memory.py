"""cryofire_nb.memory: freed heap pages are handed back at most once per interval."""

from __future__ import annotations

import platform

import pytest

from cryofire_nb import memory


def test_release_is_rate_limited(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_trim", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(memory, "_last", 0.0)
    memory.release()
    memory.release()  # within INTERVAL_S of the first: nothing
    memory.release(force=True)
    assert calls == [0, 0]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_trim_is_found_and_runs():
    assert memory._trim is not None
    memory.release(force=True)
