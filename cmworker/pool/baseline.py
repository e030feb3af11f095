"""What a job finds in its worker, put back after every job (worker side).

A worker runs one job after another in the same process, so anything a job changes in the process
would reach the next job, which may belong to someone else: a SIGALRM left ignored silently disables
the next job's soft timeout, a thread left running may kill it later. The worker captures its state
once, right after the fork (``Baseline.capture``), and after each job puts back what can be put back
and names what cannot (``restore``); for the latter the worker is replaced after its answer.

Put back: working directory, ``os.environ``, umask, signal dispositions and the signal mask, interval
timers, ``sys.stdout``/``sys.stderr`` and the file descriptors 1 and 2.
Cannot be put back (fresh worker): a Python thread still running, a working directory that is gone,
another user or group.
Left alone on purpose: module state (globals, ``sys.modules``, caches: reusing them is why workers
live long), open files and connections, threads of native libraries (a BLAS pool runs no job code).
"""

from __future__ import annotations

# The C half of ``signal``: its getsignal returns the raw handler. ``signal.getsignal`` converts it to
# an enum, which for a Python handler raises and catches ValueError: checking every signal that way
# took ~90 us per job, against ~4 us.
import _signal  # type: ignore[import-not-found]
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)


@dataclass
class _Fd:
    fd: int
    saved: int   # a duplicate of what the worker had on ``fd``
    identity: tuple[int, int]


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

    @classmethod
    def capture(cls) -> Baseline:
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        umask = os.umask(0)
        os.umask(umask)
        signums = tuple(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
        fds = []
        for fd in (1, 2):
            try:
                fds.append(_Fd(fd, os.dup(fd), _identity(fd)))
            except OSError:
                continue
        return cls(cwd, dict(os.environ), _environ_data(), umask, signums, _handlers(signums),
                   signal.pthread_sigmask(signal.SIG_BLOCK, []), sys.stdout, sys.stderr, fds, _ids())

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
        return reasons

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


def _restore_fd(fd: _Fd) -> list[str]:
    try:
        if _identity(fd.fd) == fd.identity:
            return []
    except OSError:
        pass  # closed by the job
    try:
        if _identity(fd.saved) != fd.identity:
            return [f"the job replaced the worker's copy of file descriptor {fd.fd}"]
        os.dup2(fd.saved, fd.fd)
    except OSError as exc:
        return [f"file descriptor {fd.fd} cannot be put back: {exc.strerror}"]
    return []
