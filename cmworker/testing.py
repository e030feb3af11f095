"""Test an app end to end without Foundry: serve it on the embedded runtime, call it with a ``Client``.

In a test suite::

    import cmworker.testing

    client = cmworker.testing.fixture("app.py")          # a pytest fixture named `client`

    def test_add(client):
        assert client.call("add", {"a": 1, "b": 2}) == {"sum": 3}

or anywhere, as a context manager::

    with cmworker.testing.served("app.py", workers=2) as client:
        client.call("add", {"a": 1, "b": 2})

What serves the app is what serves it in a container: the replica's parent (the poll loop, the ledger,
the posters, the supervisor) on threads of the calling process, its worker template and workers as
real processes that import the app, and the embedded runtime on loopback HTTPS in between. So a test
sees real answers: a timeout is a killed process, a crash a ``WorkerDied``. The calling process never
imports the app for this. Logs go to the ``logging``/``structlog`` setup of the caller (pytest captures
them and shows them for a failed test).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmworker.config import load_config
from cmworker.errors import CmworkerError

if TYPE_CHECKING:
    from cmworker.runtime.client import Client

__all__ = ["ServingFailed", "fixture", "served"]

# A GET job held by the runtime for this long at most: short, so that leaving `served` is quick.
_LONG_POLL = 0.5


class ServingFailed(CmworkerError):
    """The app could not be served (it failed to import, registers no function, or its workers die)."""


@contextmanager
def served(app: str | os.PathLike[str], *, workers: int = 2, config: str | os.PathLike[str] | None = None,
           settings: Mapping[str, object] | None = None, start_timeout: float = 60.0) -> Iterator[Client]:
    """Serve ``app`` (a ``.py`` path, a module or ``module:attribute``) until the block ends; yield a
    ``Client`` of the runtime it is served on.

    ``config``: its cmworker.toml; by default the one beside a ``.py`` app, if there is one.
    ``settings``: settings over the file's, by key (``{"limits.timeout": "5s"}``), as flags would.
    On entry it waits until the replica has posted its function schemas (every worker up), so an app
    that cannot be served raises ``ServingFailed`` here and not in a call. On exit the replica drains
    as on SIGTERM: running jobs finish within ``shutdown_grace`` and every job held gets its answer.
    """
    from cmworker.replica.poller import Poller
    from cmworker.replica.service import Service, discover
    from cmworker.runtime.embedded import EmbeddedRuntime

    loaded = load_config(_config_path(app, config), flags={**(settings or {}), "app": os.fspath(app),
                                                           "workers": workers})
    with EmbeddedRuntime(max_concurrent_tasks=workers, long_poll=_LONG_POLL) as runtime:
        service = Service(discover(runtime.env(0)), long_poll_timeout=loaded.poll_timeout)
        poller = Poller(loaded, service)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=_serve, args=(poller, outcome), name="cmworker-testing", daemon=True)
        thread.start()
        try:
            _wait_ready(lambda: runtime.record.schemas(0) is not None, thread, poller, outcome, start_timeout)
            with runtime.client() as client:
                yield client
        finally:
            poller.stop()
            thread.join()
        if outcome.get("error") is not None or outcome.get("code", 0) != 0 or poller.pool.unhealthy is not None:
            raise ServingFailed(f"serving {os.fspath(app)} ended badly: {_reason(poller, outcome)}")


def fixture(app: str | os.PathLike[str], *, name: str = "client", scope: str = "module", workers: int = 2,
            config: str | os.PathLike[str] | None = None, settings: Mapping[str, object] | None = None) -> Any:
    """A pytest fixture serving ``app`` (see ``served``) and giving its ``Client``; assign it to a
    module-level name of a test file or conftest.py. ``scope="module"`` serves the app once per test
    file; ``"function"`` once per test. A relative ``app`` is taken from the directory pytest runs in."""
    import pytest

    def serve_app() -> Iterator[Client]:
        with served(app, workers=workers, config=config, settings=settings) as client:
            yield client

    serve_app.__name__ = name
    serve_app.__doc__ = f"A cmworker.Client of {os.fspath(app)}, served on the embedded runtime."
    return pytest.fixture(scope=scope, name=name)(serve_app)  # type: ignore[call-overload]


def _config_path(app: str | os.PathLike[str], config: str | os.PathLike[str] | None) -> str | None:
    if config is not None:
        return os.fspath(config)
    text = os.fspath(app)
    if text.endswith(".py"):
        beside = Path(text).resolve().parent / "cmworker.toml"
        if beside.is_file():
            return str(beside)
    return None


def _serve(poller: Any, outcome: dict[str, Any]) -> None:
    try:
        outcome["code"] = poller.run()
    except BaseException as exc:
        outcome["error"] = exc


def _wait_ready(ready: Callable[[], bool], thread: threading.Thread, poller: Any, outcome: dict[str, Any],
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not thread.is_alive():
            raise ServingFailed(_reason(poller, outcome)) from outcome.get("error")
        if time.monotonic() > deadline:
            raise ServingFailed(f"the app was not served within {timeout:.0f}s")
        thread.join(0.02)


def _reason(poller: Any, outcome: dict[str, Any]) -> str:
    if outcome.get("error") is not None:
        return str(outcome["error"])
    unhealthy = getattr(getattr(poller, "pool", None), "unhealthy", None)
    if unhealthy is not None:
        return str(unhealthy)
    return f"the replica stopped with exit code {outcome.get('code')}"
