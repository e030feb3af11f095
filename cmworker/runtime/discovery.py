"""How a running embedded runtime announces itself, so that ``cmworker call`` and ``Client()`` find it.

The runtime (``cmworker runtime`` or ``cmworker dev``) writes one small JSON file, readable only by
its user because it carries the caller token::

    $CMWORKER_STATE_DIR/runtime.json      (default: ${XDG_CACHE_HOME:-~/.cache}/cmworker/runtime.json)
    {"pid": 1234, "url": "https://127.0.0.1:PORT", "token": "...", "ca": "/path/ca.pem",
     "stateDir": "/path", "replicas": [{"GET_JOB_URI": ..., ...}, ...]}

and removes it on a clean exit. A file left behind by a killed runtime is recognised by its dead pid.
When several runtimes run at once, the last one started is the one found. Each also registers itself
in ``runtimes/PID.json`` beside it, so that when the newest stops, an older one still running is
found again (``withdraw`` points ``runtime.json`` back at it; ``find_runtime`` looks there too).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cmworker.errors import RuntimeUnavailable

DISCOVERY_FILE = "runtime.json"
_REGISTRY = "runtimes"  # beside it: one PID.json per runtime running
_HINT = "start one with `cmworker runtime` (or `cmworker dev app.py`)"


def state_home(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory of cmworker's local state: ``override``, ``$CMWORKER_STATE_DIR``, or the cache."""
    if override is not None:
        return Path(override)
    if os.environ.get("CMWORKER_STATE_DIR"):
        return Path(os.environ["CMWORKER_STATE_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "cmworker"


def discovery_path(home: str | os.PathLike[str] | None = None) -> Path:
    return state_home(home) / DISCOVERY_FILE


@dataclass(frozen=True)
class RuntimeInfo:
    """What a running runtime published about itself."""

    url: str
    token: str
    ca: str
    pid: int
    state_dir: str
    replicas: list[dict[str, str]]


class Announced(Protocol):
    """What ``publish`` reads of a runtime; an ``EmbeddedRuntime`` is one. Named by its shape rather
    than imported: the runtime hands out clients, and a client reads this module to find the runtime."""

    @property
    def caller_token(self) -> str: ...

    @property
    def query_url(self) -> str: ...

    @property
    def ca_path(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def replicas(self) -> int: ...

    def env(self, replica: int = 0) -> dict[str, str]: ...


def publish(runtime: Announced, home: str | os.PathLike[str] | None = None) -> Path:
    """Announce ``runtime`` (atomically: readers never see half a file); return the file's path."""
    path = discovery_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "url": runtime.query_url, "token": runtime.caller_token,
            "ca": str(runtime.ca_path), "stateDir": str(runtime.state_dir),
            "replicas": [runtime.env(i) for i in range(runtime.replicas)]}
    registry = path.parent / _REGISTRY
    registry.mkdir(mode=0o700, exist_ok=True)
    _write_atomically(registry / f"{os.getpid()}.json", info)
    _write_atomically(path, info)
    return path


def _write_atomically(path: Path, info: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    os.replace(temporary, path)


def withdraw(path: Path) -> None:
    """Take this process's runtime off the registry; if ``path`` announces it, announce there the newest
    other runtime still running instead, or remove it when there is none."""
    registry = path.parent / _REGISTRY
    with contextlib.suppress(OSError):
        (registry / f"{os.getpid()}.json").unlink()
    try:
        if _read(path).get("pid") != os.getpid():
            return  # a newer runtime owns it
        others = _registered(registry, but=os.getpid())
        if others:
            _write_atomically(path, others[0])
        else:
            path.unlink()
            registry.rmdir()
    except (OSError, ValueError):
        pass


def _registered(registry: Path, but: int | None = None) -> list[dict[str, Any]]:
    """The announcements of the runtimes in ``registry`` still running (but the one of pid ``but``),
    newest first; the files of those that died without withdrawing are removed."""
    found = []
    try:
        entries = list(registry.glob("*.json"))
    except OSError:
        return []
    for entry in entries:
        try:
            data, mtime = _read(entry), entry.stat().st_mtime_ns
        except (OSError, ValueError):
            continue
        pid = data.get("pid")
        if isinstance(pid, int) and pid != but and _alive(pid):
            found.append((mtime, data))
        elif pid != but:
            with contextlib.suppress(OSError):
                entry.unlink()
    return [data for _, data in sorted(found, key=lambda pair: pair[0], reverse=True)]


def find_runtime(home: str | os.PathLike[str] | None = None) -> RuntimeInfo:
    """The running runtime's announcement; ``RuntimeUnavailable`` when none is running."""
    path = discovery_path(home)
    try:
        data = _read(path)
    except FileNotFoundError:
        running = _registered(path.parent / _REGISTRY)
        if not running:
            raise RuntimeUnavailable(f"no embedded runtime is running (no {path}): {_HINT}") from None
        data = running[0]
    except (OSError, ValueError) as exc:
        raise RuntimeUnavailable(f"cannot read {path}: {exc}") from None
    if isinstance(data.get("pid"), int) and not _alive(data["pid"]):
        data = next(iter(_registered(path.parent / _REGISTRY)), data)  # an older one may still run
    try:
        info = RuntimeInfo(url=data["url"], token=data["token"], ca=data["ca"], pid=int(data["pid"]),
                           state_dir=data.get("stateDir", ""), replicas=data.get("replicas", []))
    except (KeyError, TypeError, ValueError):
        raise RuntimeUnavailable(f"{path} is not a runtime announcement") from None
    if not _alive(info.pid):
        raise RuntimeUnavailable(f"no embedded runtime is running (the one in {path}, pid {info.pid}, "
                                 f"has exited): {_HINT}")
    return info


def _read(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
