"""Parent side: keep the pipeline loop running, relay what it writes, stop it on SIGTERM.

    supervisor (cmworker pipeline / cmworker dev --pipeline; the container's PID 1)
      │  one select over: the loop's stdout and stderr pipes, the signal wake-up pipe
      │  timeout = the nearest deadline (restart after a backoff, SIGKILL after the grace)
      └── runner (python -m cmworker.pipeline_mode.runner; own session; child subreaper)
            └── the app's @cmworker.pipeline loop (and an Executor's processes, if it makes one)

The loop's process ends in one of four ways, and the supervisor answers each:

* it returned (exit 0): the pipeline finished, and so does the supervisor (exit 0);
* it could not load the app (``runner.LOAD_FAILED``): starting it again cannot help (exit 2);
* it crashed (raised, died of a signal, exited otherwise): restarted after a backoff that doubles with
  each crash in a row, up to ``backoff_max``. A crash ``startup_window`` or more after its start ends
  the series. ``crash_loop_limit`` crashes in a row, each within ``startup_window`` of its start, is a
  crash loop: the supervisor stops (exit 3) rather than restart it for ever;
* it was asked to stop (SIGTERM or SIGINT to the supervisor, passed on as SIGTERM): it has
  ``shutdown_grace`` to return before its whole process group is killed; the supervisor exits 0.
  A second signal kills it at once.

As PID 1 the supervisor reaps every orphan re-parented to it; it is a child subreaper anyway, so what
the loop's processes abandon is reaped (and, once the loop is gone, killed) here.

Every line the loop writes reaches the log through the supervisor, so the supervisor is where the
module's secrets are registered for redaction (``intake.SecretFiles``): ``CLIENT_SECRET``, the job token
in the file ``BUILD2_TOKEN`` names and every scalar of the sources' credentials. What the loop's process
registers itself (``pipeline_token()`` does) redacts the lines it renders, not its prints, and not what
the supervisor writes again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

from cmworker import logs
from cmworker.pipeline_mode.runner import LOAD_FAILED
from cmworker.pool import stack
from cmworker.pool.jobs import OutputLine
from cmworker.pool.output import WorkerOutput
from cmworker.replica.intake import SecretFiles
from cmworker.replica.job_output import OutputRelay
from cmworker.resources import BUILD2_TOKEN

EXIT_FINISHED, EXIT_LOAD_FAILED, EXIT_CRASH_LOOP = 0, 2, 3
_PR_SET_CHILD_SUBREAPER = 36
_log = logs.get_logger("cmworker.pipeline")


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed loop is started again, and when crashing has become a crash loop."""

    backoff: float = 0.1          # the first restart's delay; doubles with each crash in a row
    backoff_max: float = 30.0
    startup_window: float = 10.0  # a crash this soon after the start is a crash "at start"
    crash_loop_limit: int = 5

    def delay(self, crashes_in_a_row: int) -> float:
        return min(self.backoff_max, self.backoff * 2.0 ** max(crashes_in_a_row - 1, 0))


@dataclass(frozen=True)
class _Loop:
    """One run of the loop's process."""

    proc: subprocess.Popen[bytes]
    output: WorkerOutput
    started: float
    attempt: int


class PipelineSupervisor:
    """Runs ``app``'s pipeline loop until it finishes, crash-loops, or a signal stops it; ``run()`` returns
    the exit status. ``env``: the loop's environment (default this process's)."""

    def __init__(self, app: str, *, shutdown_grace: float, log_level: str = "INFO",
                 logger_levels: tuple[tuple[str, str], ...] = (), env: Mapping[str, str] | None = None,
                 policy: RestartPolicy = RestartPolicy(), clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.shutdown_grace = shutdown_grace
        self.log_level = log_level
        self.logger_levels = logger_levels
        self.env = dict(os.environ if env is None else env)
        self.policy = policy
        self.clock = clock
        self.relay = OutputRelay()
        self.loop: _Loop | None = None
        self.attempts = 0
        self.crashes_in_a_row = 0
        self.start_crashes = 0
        self.restart_at: float | None = None
        self.kill_at: float | None = None
        self.stopping = False
        self.status: int | None = None  # set when the supervisor is done
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        logs.add_secret(self.env.get("CLIENT_SECRET"))
        self._secret_files = SecretFiles(self.env, logs.add_secret, token_env=BUILD2_TOKEN)
        self._secret_files.refresh()

    # -- the main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._start()
        try:
            while self.status is None:
                self._wait()
                self._handle_signals()
                self._reap()
                self._on_deadlines()
        finally:
            self._end_leftovers()
            logs.flush_deferred()
        return self.status

    def _wait(self) -> None:
        fds = [self._wake_r]
        if self.loop is not None:
            fds += [self.loop.output.out_fd, self.loop.output.err_fd]
        deadlines = [t for t in (self.restart_at, self.kill_at) if t is not None]
        timeout = max(0.0, min(deadlines) - self.clock()) if deadlines else None
        if self.loop is not None and timeout is None:
            timeout = 1.0  # a loop that closed its pipes but lives on is noticed by its SIGCHLD; this is a backstop
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        for fd in readable:
            if fd != self._wake_r:
                self._read_output(fd)

    # -- signals: the handlers record, the loop acts ---------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._record_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only wakes the select

    def _record_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            self.handle_stop(signal.Signals(signum).name)

    def handle_stop(self, name: str) -> None:
        if self.stopping:
            _log.warning("pipeline_stop_forced", signal=name)
            self._kill_loop()
            return
        self.stopping = True
        self.restart_at = None
        if self.loop is None:
            self.status = EXIT_FINISHED
            return
        _log.info("pipeline_stopping", signal=name, timeout_s=self.shutdown_grace, pid=self.loop.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.loop.proc.pid, signal.SIGTERM)
        self.kill_at = self.clock() + self.shutdown_grace

    # -- the loop's process ----------------------------------------------------------------------

    def _start(self) -> None:
        argv = [sys.executable, "-m", "cmworker.pipeline_mode.runner", self.app, str(self.attempts),
                json.dumps(sys.path), self.log_level, json.dumps([list(p) for p in self.logger_levels])]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
        proc.stdout.close()
        proc.stderr.close()
        for fd in (out_fd, err_fd):
            os.set_blocking(fd, False)
        output = WorkerOutput(out_fd, err_fd, self.clock, crashes_only=True)  # a dump the loop wrote is its output
        self.loop = _Loop(proc, output, self.clock(), self.attempts)
        if self.attempts:
            _log.info("pipeline_restarted", attempt=self.attempts, pid=proc.pid)
        self.attempts += 1

    def _read_output(self, fd: int) -> None:
        loop = self.loop
        if loop is None:
            return
        self._secret_files.refresh()  # before any line the loop wrote with a new token is relayed
        lines, _ = loop.output.read(fd)
        for stream, text in lines:
            self.relay(OutputLine(None, loop.proc.pid, stream, text))
        dropped = loop.output.take_dropped()
        if dropped:
            self.relay(OutputLine(None, loop.proc.pid, "stderr", "", dropped=dropped))

    def _reap(self) -> None:
        """Collect every child that exited: the loop's process, and any orphan (as PID 1 or subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.loop is not None and pid == self.loop.proc.pid:
                self.loop.proc.returncode = os.waitstatus_to_exitcode(status)
                self._ended(self.loop, self.loop.proc.returncode)

    def _ended(self, loop: _Loop, code: int) -> None:
        self._secret_files.refresh()
        for stream, text in loop.output.drain():
            self.relay(OutputLine(None, loop.proc.pid, stream, text))
        loop.output.close()
        self.loop = None
        self.kill_at = None
        self._end_leftovers()
        ran = self.clock() - loop.started
        how: dict[str, object] = {"exit_code": code} if code >= 0 else {"signal": signal.Signals(-code).name}
        if self.stopping:
            _log.info("pipeline_stopped", wall_s=round(ran, 3), **how)
            self.status = EXIT_FINISHED
        elif code == 0:
            _log.info("pipeline_finished", wall_s=round(ran, 3))
            self.status = EXIT_FINISHED
        elif code == LOAD_FAILED:
            _log.critical("pipeline_not_started", reason="the app could not be loaded; see the line above")
            self.status = EXIT_LOAD_FAILED
        else:
            self._crashed(loop, ran, how)

    def _crashed(self, loop: _Loop, ran: float, how: dict[str, object]) -> None:
        at_start = ran < self.policy.startup_window
        self.crashes_in_a_row = self.crashes_in_a_row + 1 if at_start else 1
        self.start_crashes = self.start_crashes + 1 if at_start else 0
        last = [_summary(text) for text in list(loop.output.last)[-5:]]
        _, found = stack.details(loop.output.stack.text)  # what faulthandler wrote as it crashed, if it did
        how = {**how, **found}
        if self.start_crashes >= self.policy.crash_loop_limit:
            _log.critical("pipeline_crash_loop", count=self.start_crashes, wall_s=round(ran, 3), last_lines=last,
                          **how)
            self.status = EXIT_CRASH_LOOP
            return
        delay = self.policy.delay(self.crashes_in_a_row)
        _log.error("pipeline_crashed", attempt=loop.attempt, wall_s=round(ran, 3), restart_in_s=delay,
                   last_lines=last, **how)
        self.restart_at = self.clock() + delay

    def _on_deadlines(self) -> None:
        now = self.clock()
        if self.restart_at is not None and now >= self.restart_at and self.status is None:
            self.restart_at = None
            self._start()
        if self.kill_at is not None and now >= self.kill_at and self.loop is not None:
            _log.warning("pipeline_killed_after_grace", timeout_s=self.shutdown_grace, pid=self.loop.proc.pid)
            self.kill_at = None
            self._kill_loop()

    def _kill_loop(self) -> None:
        if self.loop is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.loop.proc.pid, signal.SIGKILL)

    def _end_leftovers(self) -> None:
        """Kill what the loop's processes left behind (orphans now re-parented here), then reap them."""
        loop_pid = self.loop.proc.pid if self.loop is not None else None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children(recursive=True):
                if child.pid != loop_pid:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0 or pid == loop_pid:
                    break


def _summary(text: str) -> str:
    """A line the loop wrote, for a crash report: an SLS line as its level, message and last stack line."""
    if not text.startswith('{"type": "service.1"'):
        return text
    try:
        record = json.loads(text)
        stack = str(record.get("stacktrace") or "").strip().splitlines()
        return f"{record.get('level')} {record.get('message')}" + (f": {stack[-1]}" if stack else "")
    except (ValueError, AttributeError):
        return text
