"""Where a job was: the Python stack of a worker that is killed or crashes, and the user's frame in it.

Worker side, ``install`` (once, before the first job): ``faulthandler`` writes the stack of every
thread to the worker's stderr pipe

- on a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT), before the signal ends the worker;
- on ``DUMP_SIGNAL``, which the parent sends instead of the first kill signal (timeout, memory). The
  handler is chained to the signal's default action, which ends the process: the worker dumps, then
  dies, so the parent knows the dump is whole when it sees the worker gone — no guessing how long to
  wait. ``faulthandler`` writes from its C signal handler, so this works while the job sleeps in C
  code, loops in pure Python, or holds the GIL in an extension.

Parent side: ``StackCatcher`` takes the dump's lines out of the worker's stderr (``output.py`` feeds it
every stderr line first), so they reach the answer rather than the job's log output (a job that dumped
its own stack and then answered gets those lines back as its output, ``WorkerOutput.release_stack``), and
``user_frame`` picks the innermost frame of the user's code in it — in the thread that runs the job,
skipping cmworker's own frames, the standard library and installed packages — for the message:
"ran past its timeout of 30s in solve() at app.py:42".
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import sys
import sysconfig
from dataclasses import dataclass

# A real-time signal: no library or job has a reason to use it, unlike SIGUSR1/2. Its default action
# ends the process, which is what the chained handler falls back to after the dump.
DUMP_SIGNAL = signal.SIGRTMIN + 5 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2

MAX_STACK = 64 * 1024  # characters of a dump kept for the answer: 100 threads of 100 frames fit


def install() -> None:
    """Worker side: dump every thread's stack to stderr on a crash and on ``DUMP_SIGNAL`` (then die)."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=True)


# -- parent side ----------------------------------------------------------------------------------

# The lines faulthandler writes. The first of a dump is a fatal-error line or a thread header; the
# rest, up to the first line of any other shape, belong to it.
_START = re.compile(r"(Fatal Python error: |(Current thread|Thread) 0x[0-9a-f]+.*\(most recent call first\):$"
                    r"|Stack \(most recent call first\):$)")
_INSIDE = re.compile(r'(  File "|  <no Python frame>$|  \.\.\.$|$|Extension modules: |Python runtime state: '
                     r"|Garbage-collecting$)")
_FATAL = re.compile(r"Fatal Python error: ")
_FRAME = re.compile(r'  File "(?P<file>.*)", line (?P<line>\d+) in (?P<function>.*)$')


class StackCatcher:
    """The dump lines of one job, caught from its worker's stderr; everything else passes through."""

    def __init__(self, crashes_only: bool = False) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._inside = False
        # Catch only a dump that a crash wrote: for a process whose every other dump is the app's own
        # (faulthandler.dump_traceback) and belongs in its output, as the pipeline loop's does.
        self._crashes_only = crashes_only

    def take(self, line: str) -> bool:
        """Whether ``line`` belongs to a dump (and is kept here, not logged as output)."""
        if self._inside and _INSIDE.match(line):
            self._keep(line)
            return True
        start = _FATAL if self._crashes_only and not self._inside else _START
        self._inside = start.match(line) is not None
        if self._inside:
            if self._lines and line.startswith("Fatal"):
                self._lines.append("")
            self._keep(line)
        return self._inside

    def _keep(self, line: str) -> None:
        if self._size < MAX_STACK:
            self._lines.append(line)
            self._size += len(line) + 1

    def reset(self) -> None:
        self._lines.clear()
        self._size = 0
        self._inside = False

    def release(self) -> list[str]:
        """The lines caught so far, handed back and forgotten (a dump the job wrote itself)."""
        lines = self._lines[:]
        self.reset()
        return lines

    @property
    def text(self) -> str | None:
        """The dump caught since the job started, or None if the worker wrote none."""
        return "\n".join(self._lines).strip("\n") or None


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int

    @property
    def where(self) -> str:
        """``solve() at /app/app.py:42``."""
        return f"{self.function}() at {self.file}:{self.line}"

    @property
    def short(self) -> str:
        """``solve() at app.py:42``, for a message."""
        return f"{self.function}() at {os.path.basename(self.file)}:{self.line}"


_CMWORKER = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LIBRARY = tuple({os.path.join(p, "") for key in ("stdlib", "platstdlib", "purelib", "platlib")
                  if (p := sysconfig.get_paths().get(key))})
_PACKAGES = re.compile(r"[/\\](site|dist)-packages[/\\]|[/\\]lib[/\\]python3\.\d+[/\\]")


def _is_user(file: str) -> bool:
    """Code of the app, not cmworker's, the standard library's or an installed package's."""
    return _not_ours(file) and not file.startswith(_LIBRARY) and not _PACKAGES.search(file)


def _not_ours(file: str) -> bool:
    return not file.startswith(_CMWORKER) and not file.startswith("<frozen")


def threads(stack: str) -> list[list[Frame]]:
    """Each thread's frames in a dump, innermost first (as faulthandler writes them)."""
    found: list[list[Frame]] = []
    for line in stack.splitlines():
        if _START.match(line) and not line.startswith("Fatal"):
            found.append([])
        elif (match := _FRAME.match(line)) and found:
            found[-1].append(Frame(match["function"], match["file"], int(match["line"])))
    return found


def user_frame(stack: str | None) -> Frame | None:
    """The innermost frame of the user's code in the thread that runs the job (the one whose outer frames
    are cmworker's worker loop), else in any thread; None when the dump shows none."""
    if not stack:
        return None
    all_threads = threads(stack)
    job = [t for t in all_threads if any(f.file.startswith(_CMWORKER) and f.file.endswith("worker.py") for f in t)]
    # An app installed as a package lives in site-packages too: then its innermost frame not cmworker's.
    for is_user in (_is_user, _not_ours):
        for thread in [*job, *all_threads]:
            for frame in thread:
                if is_user(frame.file):
                    return frame
    return None


def details(stack: str | None) -> tuple[str, dict[str, str]]:
    """`` in solve() at app.py:42`` for a message (or ""), and the ``stack``/``where`` details of the answer."""
    if not stack:
        return "", {}
    frame = user_frame(stack)
    if frame is None:
        return "", {"stack": stack}
    return f" in {frame.short}", {"stack": stack, "where": frame.where}
