"""The OS mechanics that enforce a job's limits (parent side).

The limits themselves are ``cmworker.limits.JobLimits``. This module holds the decoding of a raw
wait status into an ``Exit`` value (decoded once, classified from the value only), the RSS of a
job's process tree, killing a job's process group, and the kernel's OOM-kill counter.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

import psutil

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Exit:
    """How a worker process ended, decoded once from its wait status."""

    pid: int
    code: int | None = None       # exit code, when it exited
    signal: int | None = None     # signal number, when a signal killed it
    max_rss: int = 0              # peak RSS in bytes (from wait4's rusage)
    cpu: float = 0.0              # user + system CPU seconds

    @classmethod
    def from_status(cls, pid: int, status: int, max_rss: int = 0, cpu: float = 0.0) -> Exit:
        if os.WIFSIGNALED(status):
            return cls(pid, signal=os.WTERMSIG(status), max_rss=max_rss, cpu=cpu)
        if os.WIFEXITED(status):
            return cls(pid, code=os.WEXITSTATUS(status), max_rss=max_rss, cpu=cpu)
        return cls(pid, code=-1, max_rss=max_rss, cpu=cpu)  # stopped/continued: not an end

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def describe(self) -> str:
        if self.signal is not None:
            meaning = signal.strsignal(self.signal) or ""
            return f"was killed by {self.signal_name} ({meaning.lower()})" if meaning else \
                f"was killed by {self.signal_name}"
        return f"exited with code {self.code}"


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc where the kernel lists them (cheap), else psutil."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    if tasks:
        kids: list[int] = []
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    kids.extend(int(k) for k in f.read().split())
            except (OSError, ValueError):
                continue
        return kids
    with contextlib.suppress(psutil.Error):
        return [c.pid for c in psutil.Process(pid).children()]
    return []


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (those still attached to it)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def rss(pid: int) -> int:
    """Resident set size of one process in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except FileNotFoundError:
        return 0
    except OSError:
        pass
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def tree_rss(pid: int) -> int:
    """Total RSS of ``pid``'s process tree in bytes."""
    return sum(rss(p) for p in process_tree(pid))


def kill_group(pgid: int, sig: int, extra_pids: list[int] | tuple[int, ...] = ()) -> None:
    """Signal a job's process group, and any descendants that left the group (setsid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in extra_pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


_OOM_EVENTS = "/sys/fs/cgroup/memory.events"


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed in this cgroup (v2), if it tells us."""
    try:
        with open(_OOM_EVENTS, "rb") as f:
            for line in f:
                key, _, value = line.partition(b" ")
                if key == b"oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None
