"""The OS mechanics that enforce a job's limits (parent, template and worker side).

The limits themselves are ``cmworker.limits.JobLimits``. This module holds the decoding of a raw
wait status into an ``Exit`` value (decoded once, classified from the value only), the processes of a
job and their RSS, killing them, and the kernel's OOM-kill counter.

A job's processes are its worker and every descendant of it: the worker is a child subreaper, so a
process whose parent exits is re-parented to the worker instead of escaping to init, whatever its
session or group. In cgroup mode (``cgroups.py``) the members of the worker's cgroup count too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass

import psutil

from cmworker.pool import cgroups

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


def children(pid: int) -> list[int]:
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
        todo.extend(children(p))
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


def job_processes(worker: int) -> list[int]:
    """The worker and every process of its job: its descendants, and the members of its cgroup."""
    tree = process_tree(worker)
    leaf = cgroups.leaf_of(worker)
    if leaf is not None:
        known = set(tree)
        tree.extend(p for p in cgroups.members(leaf) if p not in known)
    return tree


# A process that forks as fast as it can needs a few rounds to be caught; past this many, whatever was
# found is killed anyway and the caller's next round (or the template) takes the rest.
_FREEZE_ROUNDS = 64


def freeze_and_kill(worker: int, include_worker: bool) -> int:
    """SIGSTOP every process of the job until a listing finds none not stopped yet, then SIGKILL them.

    Killing from a list races a process that forks meanwhile: its new child is in no list. A stopped
    process cannot fork, so once a listing shows nothing new, nothing can be missed. Returns how many
    processes were signalled.
    """
    stopped: set[int] = set()
    try:
        for _ in range(_FREEZE_ROUNDS):
            fresh = [p for p in job_processes(worker) if p not in stopped and (include_worker or p != worker)]
            if not fresh:
                break
            for pid in fresh:
                stopped.add(pid)
                _signal(pid, signal.SIGSTOP)
    finally:
        for pid in stopped:
            _signal(pid, signal.SIGKILL)
    return len(stopped)


def kill_job(worker: int) -> None:
    """SIGKILL a worker and every process of its job, at once through its cgroup where there is one."""
    leaf = cgroups.leaf_of(worker)
    if leaf is not None:
        cgroups.kill(leaf)
    freeze_and_kill(worker, include_worker=True)


_PR_SET_DUMPABLE = 4


def forbid_tracing(forbid: bool = True) -> None:
    """Make this process, and the children it forks from now on, non-dumpable: the kernel then lets no
    process of the same user ptrace it or open its /proc/<pid>/mem, short of CAP_SYS_PTRACE. Jobs run as
    the replica's user; dumpable, the replica and its siblings' workers would give any job every job's
    credentials (tests/test_redteam_jobs.py). An exec makes a process dumpable again.

    The price: a non-dumpable process's /proc/self files belong to root, so a process not run as root
    can no longer write its own (``oom_score_adj``, ``clear_refs``). A new worker, which holds nothing
    yet, is made dumpable (``forbid=False``) while it opens and writes those, then non-dumpable again
    before its first job."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0 if forbid else 1, 0, 0, 0)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


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


# Memory is sampled more often the closer a job is to its limit: the next sample is due when a job
# growing at _ASSUMED_GROWTH could reach the limit, bounded to [_SAMPLE_MIN, _SAMPLE_MAX] seconds. The
# rate must be one no real allocation beats: at 4 GiB/s, a job on transparent huge pages (measured at
# 5.5-7.8 GiB/s) overshot a 512 MiB limit by up to 364 MiB.
_ASSUMED_GROWTH = 16 * 2**30
_SAMPLE_MIN, _SAMPLE_MAX = 0.002, 0.1


def next_sample(headroom: int) -> float:
    """Seconds until a job's memory is sampled again, given how many bytes it has left below its limit."""
    return min(_SAMPLE_MAX, max(_SAMPLE_MIN, headroom / _ASSUMED_GROWTH))
