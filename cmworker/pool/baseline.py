"""What a job finds in its worker, put back after every job (worker side).

A worker runs one job after another in the same process, so anything a job changes in the process
would reach the next job, which may belong to someone else: a SIGALRM left ignored silently disables
the next job's soft timeout, a thread left running may kill it later. The worker captures its state
once, right after the fork (``Baseline.capture``), and after each job puts back what can be put back
and names what cannot (``restore``); for the latter the worker is replaced after its answer.

Put back: working directory, ``os.environ``, umask, signal dispositions and the signal mask, interval
timers, ``sys.stdout``/``sys.stderr``, the file descriptors 1 and 2 and the worker's socket to the parent
(what they are, and their blocking mode: a job left O_NONBLOCK on the socket, and the idle worker's next
read failed, which it took for the parent leaving), resource limits (a soft RLIMIT_CPU a job lowered
to 1 s held for the next job), priority, scheduling policy, CPU affinity and process group, the
child-subreaper, parent-death-signal and dumpable flags, and the interpreter's settings: recursion
limit, switch interval, the garbage collector's switch and thresholds, ``faulthandler`` (the stack in a
crash's answer).
Cannot be put back (fresh worker): a Python thread still running, a working directory that is gone,
another user or group, a limit or priority only a privileged process may raise again, another session,
a subreaper flag the job turned off (what it started meanwhile was re-parented to the template, which
kills it when it reaps the worker).
Left alone on purpose: module state (globals, ``sys.modules``, caches: reusing them is why workers
live long), open files and connections, threads of native libraries (a BLAS pool runs no job code).
"""

from __future__ import annotations

# The C half of ``signal``: its getsignal returns the raw handler. ``signal.getsignal`` converts it to
# an enum, which for a Python handler raises and catches ValueError: checking every signal that way
# took ~90 us per job, against ~4 us.
import _signal  # type: ignore[import-not-found]
import contextlib
import ctypes
import faulthandler
import gc
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
_RLIMITS = tuple(sorted((getattr(resource, name), name) for name in dir(resource) if name.startswith("RLIMIT_")))
_PR_SET_PDEATHSIG, _PR_GET_PDEATHSIG = 1, 2
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


@dataclass
class _Fd:
    fd: int
    saved: int   # a duplicate of what the worker had on ``fd``
    identity: tuple[int, int]
    blocking: bool


@dataclass
class Baseline:
    cwd: str | None
    environ: dict[str, str]
    environ_data: dict[Any, Any] | None  # os.environ's own dict, compared in ~1 us instead of ~75
    umask: int
    signums: tuple[int, ...]
    handlers: list[Any]          # each signal's handler, in the order of ``signums``
    mask: set[int | signal.Signals]
    stdout: TextIO
    stderr: TextIO
    fds: list[_Fd]
    ids: tuple[Any, ...]
    process: tuple[Any, ...]     # what ``_process()`` reads: limits, priority, affinity, process group
    interpreter: tuple[Any, ...]
    flags: tuple[int, int, int] | None  # (subreaper, parent-death signal, dumpable); None: no prctl here

    @classmethod
    def capture(cls, *keep: int) -> Baseline:
        """The worker's state now; ``keep`` names more fds to put back like 1 and 2 (its socket)."""
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        umask = os.umask(0)
        os.umask(umask)
        signums = tuple(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
        fds = []
        for fd in (1, 2, *keep):
            try:
                fds.append(_Fd(fd, os.dup(fd), _identity(fd), os.get_blocking(fd)))
            except OSError:
                continue
        return cls(cwd, dict(os.environ), _environ_data(), umask, signums, _handlers(signums),
                   signal.pthread_sigmask(signal.SIG_BLOCK, []), sys.stdout, sys.stderr, fds, _ids(),
                   _process(), _interpreter(), _flags())

    def restore(self) -> list[str]:
        """Put back what a job changed; return why this worker cannot take another job (none: it can)."""
        reasons = []
        threads = len(sys._current_frames()) - 1
        if threads > 0:
            reasons.append(f"the job left {threads} thread(s) running")
        if _ids() != self.ids:
            reasons.append("the job changed the worker's user or groups")
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)
            except OSError as exc:
                reasons.append(f"the worker's working directory {self.cwd} cannot be entered again: {exc.strerror}")
        os.umask(self.umask)
        for which in _TIMERS:
            signal.setitimer(which, 0)
        if _handlers(self.signums) != self.handlers:
            self._restore_handlers()
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        data = getattr(os.environ, "_data", None)
        if data is None or self.environ_data is None or data != self.environ_data:
            self._restore_environ()
        sys.stdout, sys.stderr = self.stdout, self.stderr
        for fd in self.fds:
            reasons.extend(_restore_fd(fd))
        if _process() != self.process:
            reasons.extend(self._restore_process())
        if _interpreter() != self.interpreter:
            self._restore_interpreter()
        if self.flags is not None and _flags() != self.flags:
            reasons.extend(self._restore_flags())
        return reasons

    def _restore_process(self) -> list[str]:
        """Limits, priority, affinity and process group; a job may lower a hard limit or the priority,
        which only a privileged process may raise again, or move the worker to a session of its own:
        then the worker cannot serve another job as it was."""
        reasons = []
        limits, nice, cpus, group, session, policy = self.process
        if os.getsid(0) != session:  # setsid(): a session leader cannot move back
            reasons.append("the job moved the worker to a session of its own")
        elif os.getpgrp() != group:
            # In a sibling's group, the worker would be killed with that sibling's job (the parent kills a
            # worker's group when it ends).
            try:
                os.setpgid(0, group)
            except OSError as exc:
                reasons.append(f"the worker's process group cannot be put back: {exc.strerror}")
        for (which, name), saved in zip(_RLIMITS, limits, strict=True):
            if resource.getrlimit(which) != saved:
                try:
                    resource.setrlimit(which, saved)
                except (OSError, ValueError) as exc:
                    reasons.append(f"the job lowered the worker's {name}, which cannot be raised again: {exc}")
        if os.getpriority(os.PRIO_PROCESS, 0) != nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError as exc:
                reasons.append(f"the job lowered the worker's priority, which cannot be raised again: {exc.strerror}")
        if policy is not None and os.sched_getscheduler(0) != policy:  # SCHED_IDLE: the next job would starve
            try:
                os.sched_setscheduler(0, policy, os.sched_param(0))
            except OSError as exc:
                reasons.append(f"the worker's scheduling policy cannot be put back: {exc.strerror}")
        if cpus is not None and os.sched_getaffinity(0) != cpus:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError as exc:
                reasons.append(f"the worker's CPU affinity cannot be put back: {exc.strerror}")
        return reasons

    def _restore_interpreter(self) -> None:
        recursion, switch, enabled, threshold, faults = self.interpreter
        sys.setrecursionlimit(recursion)
        sys.setswitchinterval(switch)
        (gc.enable if enabled else gc.disable)()
        gc.set_threshold(*threshold)
        if faults and not faulthandler.is_enabled():
            faulthandler.enable(file=self.stderr, all_threads=True)

    def _restore_flags(self) -> list[str]:
        subreaper, deathsig, dumpable = self.flags or (0, 0, 1)
        now_subreaper = (_flags() or (0, 0, 1))[0]
        _prctl(_PR_SET_PDEATHSIG, deathsig)
        _prctl(_PR_SET_DUMPABLE, dumpable)  # made dumpable, the next job's worker could be read by its siblings
        if now_subreaper == subreaper:
            return []
        _prctl(_PR_SET_CHILD_SUBREAPER, subreaper)
        # While the flag was off, what the job forked and left was re-parented to the template, out of the
        # worker's reach; the template kills every child that is not a worker when it reaps one.
        return ["the job turned off the worker's child-subreaper flag, so what it started may have escaped "
                "the worker"]

    def _restore_handlers(self) -> None:
        for signum, handler in zip(self.signums, self.handlers, strict=True):
            if handler is not None and _signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)

    def _restore_environ(self) -> None:
        for key in [k for k in os.environ if k not in self.environ]:
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        time.tzset()  # TZ may have been among them
        self.environ_data = _environ_data()


def _handlers(signums: tuple[int, ...]) -> list[Any]:
    return list(map(_signal.getsignal, signums))


def _environ_data() -> dict[Any, Any] | None:
    """A copy of the dict behind ``os.environ`` (CPython's private ``_data``), or None without one."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else None


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _ids() -> tuple[Any, ...]:
    return os.getresuid(), os.getresgid(), tuple(os.getgroups())


def _process() -> tuple[Any, ...]:
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    return ([resource.getrlimit(which) for which, _ in _RLIMITS], os.getpriority(os.PRIO_PROCESS, 0), cpus,
            os.getpgrp(), os.getsid(0), policy)


def _interpreter() -> tuple[Any, ...]:
    return (sys.getrecursionlimit(), sys.getswitchinterval(), gc.isenabled(), gc.get_threshold(),
            faulthandler.is_enabled())


_libc: Any = None


def _prctl(option: int, value: int) -> int:
    return int(_libc.prctl(option, value, 0, 0, 0))


def _flags() -> tuple[int, int, int] | None:
    """The worker's child-subreaper flag, parent-death signal and dumpable flag (Linux only)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        with contextlib.suppress(OSError, AttributeError):
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc is None:
            return None
    subreaper, deathsig = ctypes.c_int(0), ctypes.c_int(0)
    _libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(subreaper), 0, 0, 0)
    _libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(deathsig), 0, 0, 0)
    return subreaper.value, deathsig.value, int(_libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def _restore_fd(fd: _Fd) -> list[str]:
    """The same open file on ``fd`` as at the start, in the same blocking mode (a flag of the open file,
    which the saved duplicate shares: set on either, it is set on both)."""
    try:
        if _identity(fd.fd) == fd.identity:
            if os.get_blocking(fd.fd) != fd.blocking:
                os.set_blocking(fd.fd, fd.blocking)
            return []
    except OSError:
        pass  # closed by the job
    try:
        if _identity(fd.saved) != fd.identity:
            return [f"the job replaced the worker's copy of file descriptor {fd.fd}"]
        os.dup2(fd.saved, fd.fd)
        os.set_blocking(fd.fd, fd.blocking)
    except OSError as exc:
        return [f"file descriptor {fd.fd} cannot be put back: {exc.strerror}"]
    return []
