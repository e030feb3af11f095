"""Optional per-worker cgroups (v2): every process a job starts stays countable and killable.

A worker's process tree already holds everything its job forks (the worker is a child subreaper, see
``template.py``). Where the container also lets us write to a cgroup v2 hierarchy, each worker moves
itself into a cgroup of its own right after the fork, before its first job::

    <the template's cgroup>/cmworker-<template pid>/worker-<worker pid>

Membership is inherited by every fork and survives ``setsid`` and re-parenting, ``cgroup.procs`` lists
the members, and ``cgroup.kill`` (Linux 5.14) ends them all at once, with no race against a process
that forks while it is being killed. Memory is still counted as the RSS of the job's processes, in both
modes, so a limit means the same thing wherever it runs (a cgroup's own memory counter would include
the page cache).

The template probes once at start (``prepare``): a cgroup2 mount, our own cgroup in it, a child cgroup
we can create and move a process into. Anything missing leaves the pool on process trees alone.
"""

from __future__ import annotations

import contextlib
import os

_MOUNTINFO = "/proc/self/mountinfo"
_PREFIX = "cmworker-"
_WORKER = "worker-"


def _v2_dir(pid: int | str = "self") -> str | None:
    """The directory of ``pid``'s cgroup in the cgroup2 hierarchy, when that hierarchy is mounted."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if path is None or "/.." in path:
        return None
    for root, mount in _v2_mounts():
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return os.path.join(mount, path[len(root):].lstrip("/")).rstrip("/")
    return None


_mounts: list[tuple[str, str]] | None = None


def _v2_mounts() -> list[tuple[str, str]]:
    """(root inside the hierarchy, mount point) of each cgroup2 mount, read once per process."""
    global _mounts
    if _mounts is None:
        _mounts = _read_mounts()
    return _mounts


def _read_mounts() -> list[tuple[str, str]]:
    mounts = []
    try:
        with open(_MOUNTINFO) as f:
            for line in f:
                fields, _, fs = line.partition(" - ")
                if fs.split(" ", 1)[0] == "cgroup2":
                    parts = fields.split()
                    mounts.append((parts[3], parts[4]))
    except (OSError, IndexError):
        return []
    return mounts


def prepare(mode: str = "auto") -> tuple[str | None, str]:
    """Set up this template's cgroup for its workers: (its directory, or None, and why in a few words).
    ``mode`` is the ``cgroups`` setting: "off" uses none."""
    if mode == "off":
        return None, "turned off by the cgroups setting"
    own = _v2_dir()
    if own is None:
        return None, "no cgroup v2 hierarchy is mounted"
    _remove_stale(own)
    base = os.path.join(own, f"{_PREFIX}{os.getpid()}")
    probe = os.path.join(base, "probe")
    try:
        os.makedirs(probe, exist_ok=True)
    except OSError as exc:
        remove(base)
        return None, f"cannot create a cgroup under {own}: {exc.strerror}"
    try:
        _move(os.getpid(), probe)
        _move(os.getpid(), own)
    except OSError as exc:
        with contextlib.suppress(OSError):
            _move(os.getpid(), own)
        return _give_up(base, probe, f"cannot move a process into a cgroup under {own}: {exc.strerror}")
    if not os.path.exists(os.path.join(probe, "cgroup.kill")):
        return _give_up(base, probe, "this kernel's cgroups have no cgroup.kill (Linux 5.14)")
    remove(probe)
    return base, f"one cgroup per worker under {base}"


def _give_up(base: str, probe: str, reason: str) -> tuple[None, str]:
    remove(probe)
    remove(base)
    return None, reason


def _move(pid: int, directory: str) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def join(base: str) -> str | None:
    """Move the calling process (a new worker) into a cgroup of its own under ``base``."""
    leaf = os.path.join(base, f"{_WORKER}{os.getpid()}")
    try:
        os.mkdir(leaf)
        _move(0, leaf)  # 0: the writing process
    except OSError:
        remove(leaf)
        return None
    return leaf


def leaf_of(pid: int) -> str | None:
    """The worker cgroup ``pid`` lives in, when it is one of ours (never any other cgroup)."""
    directory = _v2_dir(pid)
    if directory is None:
        return None
    name, parent = os.path.basename(directory), os.path.basename(os.path.dirname(directory))
    if name == f"{_WORKER}{pid}" and parent.startswith(_PREFIX):
        return directory
    return None


def worker_leaf(base: str, pid: int) -> str:
    return os.path.join(base, f"{_WORKER}{pid}")


def members(leaf: str) -> list[int]:
    """Every process in a worker's cgroup; empty when it is gone."""
    try:
        with open(os.path.join(leaf, "cgroup.procs"), "rb") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def kill(leaf: str) -> bool:
    """SIGKILL every member of a worker's cgroup at once; False when that cannot be done."""
    try:
        with open(os.path.join(leaf, "cgroup.kill"), "w") as f:
            return f.write("1") == 1
    except OSError:
        return False


def remove(directory: str) -> bool:
    """Remove a cgroup once no live process is in it; True when it is gone."""
    with contextlib.suppress(OSError):
        os.rmdir(directory)
    return not os.path.exists(directory)


def _remove_stale(own: str) -> None:
    """Remove what a template that was killed outright left behind, once its processes are gone."""
    try:
        names = os.listdir(own)
    except OSError:
        return
    for name in names:
        pid = name[len(_PREFIX):]
        if name.startswith(_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            stale = os.path.join(own, name)
            with contextlib.suppress(OSError):
                for leaf in os.listdir(stale):
                    if os.path.isdir(os.path.join(stale, leaf)):
                        remove(os.path.join(stale, leaf))
            remove(stale)
