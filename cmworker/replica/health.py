"""The replica's health for the container's probes: ``cmworker run`` writes it, ``cmworker health`` reads it.

A Kubernetes exec probe starts a process every few seconds, so the probe must not import the app or
talk to the runtime. The parent therefore keeps a small JSON status file, rewritten every second by a
thread of its own and once more on its way out::

    {"pid": 1, "state": "serving", "reason": "", "beat": 81234.5, "time": "2026-12-04T21:00:00Z",
     "interval": 1.0, "template_pid": 9, "workers": 4, "held": 1}

``beat`` is ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the machine, and
immune to changes of the wall clock); ``time`` is for people. A record is written to a sibling file and
renamed over the old one, so a reader sees a whole record or the previous one, never half of one.

``state`` is one of::

    starting    finding the runtime, starting the workers, announcing the functions; or starting a new
                template after the last one died
    serving     the pool is healthy and the poll loop has asked the runtime for jobs
    unhealthy   the parent runs, but cannot serve: the crash-loop breaker tripped, or GET job has been
                failing for longer than ``health.unreachable_after``
    stopping    SIGTERM (or a fatal error): running jobs finish, no new job is taken
    stopped     the parent has exited; ``reason`` says why

``judge`` (the reading side) adds what only a second process can see: whether the parent is still
alive, whether its heartbeat is fresh (a wedged parent stops beating), and whether the template it
named is still alive.

Whether the runtime is reachable is learnt from the poll thread's GETs, through the Poller's observer:
a GET that started and has not ended is normal (the runtime holds it for its long poll); a GET started
while the one before never ended (that one failed), or one running past ``poll_timeout``, means the
runtime is not answering. The failing time runs from the first unanswered GET since the last answered one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from cmworker import logs
from cmworker.units import format_duration

if TYPE_CHECKING:
    from cmworker.config import Config
    from cmworker.replica.poller import Observer, Poller

log = logging.getLogger("cmworker.health")

BEAT_INTERVAL = 1.0        # seconds between two records while the parent runs
DEFAULT_MAX_AGE = 10.0     # a heartbeat older than this means a wedged parent (ten missed beats)
STATES = ("starting", "serving", "unhealthy", "stopping", "stopped")


@dataclass(frozen=True)
class Status:
    """One record of the status file."""

    pid: int
    state: str
    reason: str
    beat: float                 # time.monotonic() when written
    time: str                   # the same moment, wall clock, for people
    interval: float             # seconds between beats
    template_pid: int | None = None
    workers: int = 0
    held: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Status:
        """Parse a record; ``ValueError`` when it is not one (a file of another program, say)."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("state") not in STATES:
            raise ValueError("not a cmworker status record")
        try:
            return cls(pid=int(data["pid"]), state=str(data["state"]), reason=str(data["reason"]),
                       beat=float(data["beat"]), time=str(data["time"]), interval=float(data["interval"]),
                       template_pid=None if data.get("template_pid") is None else int(data["template_pid"]),
                       workers=int(data.get("workers", 0)), held=int(data.get("held", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a cmworker status record ({exc!r})") from None


def status_path(setting: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the status file is for the ``health.file`` setting; ``None`` for "off"."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting)
    environ = os.environ if environ is None else environ
    runtime_dir = environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime_dir:
        return Path(runtime_dir) / "cmworker" / "health.json"
    return Path(tempfile.gettempdir()) / f"cmworker-{os.getuid()}" / "health.json"


# ---------------------------------------------------------------------------------------------------
# The reading side: cmworker health.
# ---------------------------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, not yet reaped by its parent) does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: a signal 0 still tells a live pid from a free one
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _describe(status: Status) -> str:
    return status.state + (f": {status.reason}" if status.reason else "")


def read_status(path: Path) -> Status:
    """The record at ``path``; ``OSError`` when it cannot be read, ``ValueError`` when it is not a record."""
    return Status.from_json(path.read_text(encoding="utf-8"))


def judge(status: Status, now: float | None = None, max_age: float = DEFAULT_MAX_AGE, *, live: bool = False,
          is_alive: Callable[[int], bool] = alive) -> tuple[bool, str]:
    """Healthy or not, and one line saying why, for a record read from the file.

    ``live`` judges for a liveness probe, whose failure restarts the container: a replica that is still
    starting (its app may take minutes to import) or draining after SIGTERM is alive, and restarting it
    would only lose that work. A start that cannot finish ends the parent by itself (the pool's start-up
    timeout, the wait for the runtime's files), and then the probe fails.
    """
    now = time.monotonic() if now is None else now
    last = _describe(status)
    if not is_alive(status.pid):
        return False, f"cmworker run (pid {status.pid}) is not running; its last status: {last}"
    if status.state == "stopped":  # its pid now belongs to another process
        return False, f"cmworker run (pid {status.pid}) has stopped: {status.reason}"
    age = now - status.beat
    if age > max_age:
        return False, (f"cmworker run (pid {status.pid}) has not updated its status for "
                       f"{format_duration(round(age, 1))} (it does every {format_duration(status.interval)}): "
                       f"it is stuck; its last status: {last}")
    if live and status.state in ("starting", "stopping"):
        return True, f"alive: pid {status.pid}, {last}"
    if status.state != "serving":
        return False, status.reason if status.state == "unhealthy" else last
    if not live and status.template_pid is not None and not is_alive(status.template_pid):
        return False, f"the worker template process (pid {status.template_pid}) is gone"
    jobs = "job" if status.held == 1 else "jobs"
    return True, f"serving: pid {status.pid}, {status.workers} workers, {status.held} {jobs} held"


# ---------------------------------------------------------------------------------------------------
# The writing side: the parent.
# ---------------------------------------------------------------------------------------------------

class Reporter:
    """Keeps the status file of one ``cmworker run`` while it serves (a context manager around it).

    ``observer`` wraps the Poller's observer to watch its GETs; ``watch`` gives the reporter the
    Poller once there is one (before that, the replica is still finding its runtime).
    """

    def __init__(self, path: Path | None, *, unreachable_after: float, poll_timeout: float, private: bool = False,
                 interval: float = BEAT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.private = private  # the directory must be this user's own (the default, in a shared /tmp)
        self.unreachable_after = unreachable_after
        self.poll_timeout = poll_timeout
        self.interval = interval
        self.clock = clock
        self._poller: Poller | None = None
        self._lock = threading.Lock()
        self._polled = False                          # the poll loop has asked for a job once
        self._get_started: float | None = None        # the GET running now (or the last one, if it failed)
        self._unanswered_since: float | None = None   # the first GET since the last one answered
        self._failed_gets = 0                         # GETs that never ended since the last one answered
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_failed = False
        self._status_failed = False

    @classmethod
    def for_config(cls, config: Config) -> Reporter:
        return cls(status_path(config.health_file), unreachable_after=config.health_unreachable_after,
                   poll_timeout=config.poll_timeout, private=config.health_file == "auto")

    # -- what the replica tells it --------------------------------------------------------------

    def observer(self, inner: Observer | None = None) -> Observer:
        """An observer for the Poller that watches its GETs, then passes every step on to ``inner``."""
        def observe(step: str, job_id: str) -> None:
            if step == "get_start":
                self._get_start()
            elif step == "get_end":
                self._get_end()
            if inner is not None:
                inner(step, job_id)
        return observe

    def _get_start(self) -> None:
        now = self.clock()
        with self._lock:
            if self._get_started is not None:  # the GET before this one never ended: it failed
                self._failed_gets += 1
            if self._unanswered_since is None:
                self._unanswered_since = now
            self._get_started = now
            self._polled = True

    def _get_end(self) -> None:
        with self._lock:
            self._get_started = self._unanswered_since = None
            self._failed_gets = 0

    def watch(self, poller: Poller) -> None:
        self._poller = poller

    # -- the status -----------------------------------------------------------------------------

    def unreachable_for(self) -> float | None:
        """How long GET job has been failing, or ``None`` while the runtime answers."""
        now = self.clock()
        with self._lock:
            since, started, failed = self._unanswered_since, self._get_started, self._failed_gets
        if since is None or started is None:
            return None
        if failed or now - started > self.poll_timeout:
            return now - since
        return None  # one GET in flight, within its bounds: the runtime may simply be holding it

    def status(self) -> Status:
        """The replica's status now."""
        state, reason = self._state()
        poller = self._poller
        template_pid = workers = held = None
        if poller is not None:
            template_pid = poller.pool.template_pid
            workers = len(poller.pool.worker_pids())
            held = len(poller.ledger)
        return self._record(state, reason, template_pid, workers or 0, held or 0)

    def _state(self) -> tuple[str, str]:
        poller = self._poller
        if poller is None:
            return "starting", "finding the runtime (its connection details)"
        if poller.pool.unhealthy is not None:
            return "unhealthy", str(poller.pool.unhealthy)
        if poller.stopping:
            return "stopping", "running jobs finish and no new job is taken"
        if not self._polled:
            return "starting", "starting the workers and announcing the functions to the runtime"
        if poller.pool.template_pid is None:  # the pool starts another; if that keeps failing, its breaker trips
            return "starting", "the worker template process is gone; a new one is starting"
        failing = self.unreachable_for()
        if failing is not None and failing > self.unreachable_after:
            return "unhealthy", (f"the runtime has not answered GET job for {format_duration(round(failing))} "
                                 f"(more than health.unreachable_after = {format_duration(self.unreachable_after)})")
        return "serving", ""

    def _record(self, state: str, reason: str, template_pid: int | None = None, workers: int = 0,
                held: int = 0) -> Status:
        # Redacted as a log line is: a reason may quote the app (an import error's traceback), and what
        # `cmworker health` prints is the probe's output, which Kubernetes keeps in the pod's events.
        # The probe's own process knows no secret, so it is done here, where they are registered.
        return Status(pid=os.getpid(), state=state, reason=logs.redact(reason), beat=self.clock(),
                      time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), interval=self.interval,
                      template_pid=template_pid, workers=workers, held=held)

    # -- the file -------------------------------------------------------------------------------

    def __enter__(self) -> Reporter:
        if self.path is None:
            return self
        self._prepare_directory(self.path)
        self._write(self.status())
        self._thread = threading.Thread(target=self._beat, name="cmworker-health", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.path is not None:
            self._write(self._record("stopped", self._exit_reason(exc)))

    def _exit_reason(self, exc: BaseException | None) -> str:
        poller = self._poller
        if isinstance(exc, Exception):
            return str(exc) or type(exc).__name__
        if exc is not None:
            return "stopped by a signal before serving"
        if poller is not None and poller.pool.unhealthy is not None:
            return str(poller.pool.unhealthy)
        return "the replica stopped (SIGTERM, or a fatal error in its log)"

    def _beat(self) -> None:
        # A heartbeat is periodic by nature: the probe reads its age to tell a live parent from a stuck one.
        while not self._done.wait(self.interval):
            try:
                status = self.status()
            except Exception:  # never the replica's end: the probe reports the heartbeat stale instead
                if not self._status_failed:
                    log.exception("the health status could not be worked out")
                self._status_failed = True
                continue
            self._status_failed = False
            self._write(status)

    def _prepare_directory(self, path: Path) -> None:
        """Create the status file's directory. The default one is made private to this user, and refused
        if another user owns it: it lives in the shared /tmp, where anyone could have made it first."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.private:
                return
            info = path.parent.lstat()
            if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
                log.warning("not writing the health status into %s: the directory is not this user's own; "
                            "set health.file", path.parent)
                self.path = None
        except OSError as exc:
            self._report_write_failure(exc)

    def _write(self, status: Status) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(status.to_json())
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            self._report_write_failure(exc)
            return
        self._write_failed = False

    def _report_write_failure(self, exc: OSError) -> None:
        # The replica serves on without it; only the probe fails, and this line says why (once per outage).
        if not self._write_failed:
            log.warning("cannot write the health status to %s (%s): cmworker health will fail", self.path, exc)
        self._write_failed = True

