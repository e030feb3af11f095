"""What ``cmworker dev`` adds to a served replica: a console a person reads, and reload.

The replica is the same ``Poller`` as in ``cmworker run``; this module watches it through public hooks
only: the observer (its first GET means the pool is up), and the pool's answer and stream callbacks,
wrapped to note for each job what its console line should show (``logs.note_job``): the user's
traceback under a failed job, the last output lines under a crashed one, streamed items and bytes,
no CPU time for a job the parent killed. The SLS output of ``cmworker run`` never passes here.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from cmworker import logs
from cmworker.commands.reload import Reloader
from cmworker.config import Config
from cmworker.errors import CmworkerError, JobError, RemoteException, error_from_payload, user_frames
from cmworker.units import human_duration, human_size

if TYPE_CHECKING:
    from cmworker.pool.jobs import Answer, StreamItem
    from cmworker.replica.poller import Poller

log = logging.getLogger("cmworker.dev")

# Answers the parent made by killing the job: the worker never reported the CPU time it spent.
_KILLED = frozenset({"timeout", "memory_limit", "shutdown", "worker_died"})


class DevConsole:
    """Attach to a ``Poller`` before it runs: ``observe`` is its observer."""

    def __init__(self, config: Config, reload: bool) -> None:
        self.config = config
        self.reload = reload
        self.poller: Poller | None = None
        self.reloader: Reloader | None = None
        self._started = False
        self._streams: dict[str, list[int]] = {}  # job id -> [items, bytes]
        self._lock = threading.Lock()

    def attach(self, poller: Poller) -> None:
        self.poller = poller
        pool = poller.pool
        on_answer, on_stream = pool.on_answer, pool.on_stream

        def answered(answer: Answer) -> None:
            self._note(answer)
            on_answer(answer)

        def streamed(item: StreamItem) -> None:
            with self._lock:
                counts = self._streams.setdefault(item.job.id, [0, 0])
                counts[0] += 1
                counts[1] += len(item.data)
            if on_stream is not None:
                on_stream(item)

        pool.on_answer, pool.on_stream = answered, streamed

    def observe(self, step: str, job_id: str) -> None:
        if step == "get_start" and not self._started:  # the pool is up and the replica polls
            self._started = True
            self._print_functions()
            if self.reload and self.poller is not None:
                pool = self.poller.pool
                self.reloader = Reloader(str(self.config.app), lambda done: pool.reload(done, self.check_limits),
                                         self._reloaded)
                self.reloader.start()
                log.info("reload is on: editing a .py file under %s reloads the app (--no-reload: off)",
                         self.reloader.root)

    def stop(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()

    # -- the start-up table and reloads ---------------------------------------------------------

    def _print_functions(self) -> None:
        assert self.poller is not None
        info = self.poller.pool.function_info
        log.info("serving %d function(s) from %s:\n%s", len(info), self.config.app, self.functions_table(info))

    def functions_table(self, info: dict[str, dict[str, Any]]) -> str:
        rows = [("function", "timeout", "soft timeout", "memory", "max result", "kind")]
        for name in sorted(info):
            try:
                lim = self.config.limits_for(name, info[name])
            except CmworkerError as exc:
                rows.append((name, f"invalid limits: {exc}", "", "", "", ""))
                continue
            rows.append((name, _or_none(lim.timeout, human_duration), _or_none(lim.soft_timeout, human_duration),
                         _or_none(lim.memory_limit, human_size), human_size(lim.max_result_size),
                         "streaming" if info[name].get("streaming") else ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                         for row in rows)

    def check_limits(self, functions_json: str) -> str | None:
        """Why the functions a reloaded app declares cannot be served (limits that cannot hold), or None:
        such an app is refused as a failed import is, the code loaded before serving on."""
        try:
            info = json.loads(functions_json)
            for name in sorted(info):
                self.config.limits_for(name, info[name])
        except CmworkerError as exc:
            return str(exc)
        except (ValueError, TypeError, AttributeError) as exc:
            return f"the new template described its functions wrongly: {exc}"
        return None

    def _reloaded(self, changed: list[str], error: str | None) -> None:
        assert self.reloader is not None and self.poller is not None
        files = ", ".join(self.reloader.relative(p) for p in changed[:5]) + (" …" if len(changed) > 5 else "")
        if error is not None:
            log.error("reload failed (%s changed); still serving the code loaded before:\n%s", files,
                      user_frames(error).rstrip())
            return
        self.poller.reloaded()
        functions = self.poller.pool.functions
        log.info("reloaded the app (%s changed); serving %s", files, ", ".join(functions) or "no function")
        try:
            self.config.check_functions(functions)
        except CmworkerError as exc:
            log.warning("%s", exc)

    # -- one job's console line -----------------------------------------------------------------

    def _note(self, answer: Answer) -> None:
        job = answer.job
        with self._lock:
            items, size = self._streams.pop(job.id, (0, 0))
        fields: dict[str, Any] = {}
        if answer.streamed or items:
            fields.update(result_bytes=None, items=items, streamed_bytes=size)
        if answer.kind in _KILLED and answer.error is not None:
            fields["cpu_s"] = None  # the worker never reported it
        below = None
        if answer.kind != "ok":
            below = describe_error(answer.error or _error_of(answer.body))
        logs.note_job(job.id, fields, below)


def describe_error(error: JobError | None) -> str | None:
    """What a person needs under a failed job: its message, the traceback from the user's code on (for an
    exception), the last lines it printed (for a crash)."""
    if error is None:
        return None
    text = str(error)
    if isinstance(error, RemoteException) and error.remote_traceback:
        text = user_frames(error.remote_traceback)
    output = getattr(error, "output", None)
    if isinstance(output, str) and output.strip():
        text += "\nlast output:\n" + "\n".join(f"  {line}" for line in output.rstrip().splitlines())
    return text


def _error_of(body: bytes | bytearray) -> JobError | None:
    try:
        return error_from_payload(json.loads(body))
    except ValueError:
        return None


def _or_none(value: float | int | None, fmt: Any) -> str:
    return "none" if not value else str(fmt(value))
