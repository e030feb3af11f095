"""Fixtures for the embedded runtime's tests: real runtimes on loopback HTTPS, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., EmbeddedRuntime]]:
    """Start runtimes (short long-poll by default); every one is stopped after the test."""
    runtimes: list[EmbeddedRuntime] = []

    def make(**kwargs: Any) -> EmbeddedRuntime:
        kwargs.setdefault("long_poll", 0.3)
        runtime = EmbeddedRuntime(**kwargs).start()
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.stop()


@pytest.fixture
def runtime(make_runtime: Callable[..., EmbeddedRuntime]) -> EmbeddedRuntime:
    return make_runtime()
