"""The worker template: a clean, single-threaded process that imports the app once and forks workers.

The parent starts it as a fresh interpreter (``python -m cmworker.pool.template``), never by forking
itself: the parent has threads and holds the service connection, and a fork of such a process is
unsafe. Starting from a fresh interpreter also makes the pool behave the same on every Python from
3.10 to 3.14, whatever ``multiprocessing``'s default start method is, because it is not used at all.

Once the app is imported the template only does two things, driven by one ``select``:

* ``Spawn`` from the parent (with the new worker's socket and stdout/stderr pipes attached as fds):
  fork, put the child in its own process group, wire its fds, run ``worker.serve``; reply ``Spawned``.
* ``SIGCHLD``: reap with ``wait4`` and report ``Exited`` (raw wait status, peak RSS, CPU) so the
  parent can classify the death; continue a worker that a job stopped.

Every worker is a child subreaper (set right after the fork: the flag is not inherited), so whatever
its job forks stays in the worker's tree, whatever its session or group, and dies with the job. The
template is one too: the processes of a job whose worker was killed are re-parented here, and the
template kills and reaps every child that is not one of its workers. Where the container allows it,
each worker also gets a cgroup of its own (``cgroups.py``); the template logs which mode is in force.

When the control socket closes (the parent exited or is shutting the pool down) the template kills
every worker and everything of its job, and exits, so nothing outlives its pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

from cmworker.app import sdk_logging
from cmworker.app.registry import FunctionSpec, load_app, registry
from cmworker.pool import cgroups, processes
from cmworker.pool.messages import (
    MAX_CONTROL_MESSAGE,
    Exited,
    Spawn,
    Spawned,
    TemplateFailed,
    TemplateReady,
    pack_packet,
    unpack_packet,
)
from cmworker.pool.options import PoolOptions
from cmworker.proctitle import set_title

_PR_SET_CHILD_SUBREAPER = 36
# How long the template, shutting down, waits for the processes it killed, so their cgroups can go.
_SHUTDOWN_REAP = 1.0
# Workers volunteer to the kernel's OOM killer before the template or the parent do, so that an
# out-of-memory kill takes the job that caused it instead of the process that answers for it.
_WORKER_OOM_SCORE_ADJ = b"500"


def main(argv: list[str]) -> NoReturn:
    """``python -m cmworker.pool.template CONTROL_FD SYS_PATH_JSON OPTIONS_JSON``."""
    control = socket.socket(fileno=int(argv[1]))
    sys.path[:] = json.loads(argv[2])
    options = PoolOptions.from_json(argv[3])
    if options.untraceable:  # before the app is imported: from then on nothing here is for a job to read
        processes.forbid_tracing()
    set_title(f"cmworker: template {options.app or ''}".rstrip())
    # Ctrl-C reaches the whole foreground process group; the parent decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _become_subreaper()
    sdk_logging.install()  # before the app imports the SDK's logging, which writes every line twice
    try:
        for module in options.preload:
            __import__(module)
        functions = load_app(options.app) if options.app else registry()
    except BaseException as exc:
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else traceback.format_exc()
        control.send(pack_packet(TemplateFailed(reason)))
        os._exit(1)
    # Everything a worker runs is imported here, once: a respawn is then only a fork (importing the
    # worker side after each fork cost ~20-30 ms per respawn, measured by scripts/bench_pool.py).
    import cmworker.logs
    import cmworker.pool.worker  # noqa: F401

    # Objects that exist now are shared copy-on-write with every worker; keep the collector off them
    # so that a worker's first collection does not touch (and copy) every page of the app.
    gc.collect()
    gc.freeze()
    Template(control, functions, options).run()


class Template:
    def __init__(self, control: socket.socket, functions: Mapping[str, FunctionSpec], options: PoolOptions) -> None:
        self.options = options
        self.control = control
        self.functions = functions
        self.workers: set[int] = set()
        # Children the app's import started are the app's business; any later child that is not a
        # worker is an orphan of a job whose worker died.
        self.spared = set(processes.children(os.getpid()))
        self.cgroup: str | None = None
        self.doomed: set[str] = set()  # cgroups of dead workers, removed once their last process is reaped
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def run(self) -> NoReturn:
        self.choose_tracking()
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only wakes the select
        self.control.send(pack_packet(TemplateReady(os.getpid(), json.dumps(describe(self.functions)))))
        while True:
            readable, _, _ = select.select([self.control.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
                self.reap()
            if self.control.fileno() in readable:
                self.handle_control()

    def choose_tracking(self) -> None:
        """Per-worker cgroups where we may create them, else process trees; one log line says which."""
        linux = sys.platform.startswith("linux")
        self.cgroup, how = cgroups.prepare(self.options.cgroups) if linux else (None, "not Linux")
        from cmworker import logs

        logs.configure("sls", self.options.log_level, stream=sys.stderr, logger_levels=self.options.logger_levels)
        mode = "cgroup" if self.cgroup else "process_tree"
        logs.get_logger("cmworker.template").info("job_process_tracking", mode=mode, detail=how)
        _warn_of_threads(logs.get_logger("cmworker.template"))
        sys.stderr.flush()

    def handle_control(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.control, MAX_CONTROL_MESSAGE, 3)
        except OSError:
            data, fds = b"", []
        if not data:
            self.shutdown()
        message = unpack_packet(data)
        if isinstance(message, Spawn) and len(fds) == 3:
            pid = self.fork_worker(fds, message.slot)
            try:
                self.control.send(pack_packet(Spawned(message.slot, pid)))
            except OSError:  # the pool closed while this worker was being forked
                self.shutdown()
        else:
            for fd in fds:
                os.close(fd)

    def fork_worker(self, fds: list[int], slot: int = 0) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.become_worker(fds, slot)
        # Both sides set the group, so neither a signal to the group nor the worker's first job can
        # race ahead of it.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        for fd in fds:
            os.close(fd)
        self.workers.add(pid)
        return pid

    def become_worker(self, fds: list[int], slot: int = 0) -> NoReturn:
        code = 70
        try:
            set_title(f"cmworker: worker {slot} idle")
            if self.options.untraceable:  # its own /proc files are its user's only while it is dumpable
                processes.forbid_tracing(False)
            os.setpgid(0, 0)
            # Before anything else can run here: from now on every orphan of this worker's jobs is
            # re-parented to it, and counted and killed with its job.
            _become_subreaper()
            if self.cgroup is not None:
                cgroups.join(self.cgroup)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            sock_fd, out_fd, err_fd = fds
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            os.close(out_fd)
            os.close(err_fd)
            with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "wb") as f:
                f.write(_WORKER_OOM_SCORE_ADJ)
            if self.options.worker_nice:  # below the parent: its short bursts of work never wait behind a job
                os.nice(self.options.worker_nice)
            # Workers log SLS JSON on stderr; the parent adds the job's context and re-emits each line.
            from cmworker import logs

            logs.configure("sls", self.options.log_level, stream=sys.stderr,
                           logger_levels=self.options.logger_levels)
            from cmworker.pool.worker import serve

            serve(socket.socket(fileno=sock_fd), self.functions, f"cmworker: worker {slot}",
                  untraceable=self.options.untraceable)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if os.WIFSTOPPED(status):
                # Any job can stop any worker (SIGSTOP to a sibling, same user): stopped, it would never
                # answer, and a job without a timeout would wait for ever. Workers never stop; the kill
                # of a job (SIGSTOP then SIGKILL) ends it all the same.
                if pid in self.workers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
                continue
            self.spared.discard(pid)  # its pid may come back as anything
            if pid in self.workers:
                self.workers.discard(pid)
                self.end_job_of(pid)
                cpu = usage.ru_utime + usage.ru_stime
                with contextlib.suppress(OSError):
                    self.control.send(pack_packet(Exited(pid, status, usage.ru_maxrss * 1024, cpu)))
            self.kill_strays()

    def end_job_of(self, worker: int) -> None:
        """A worker is gone: whatever of its job is left in its cgroup dies with it."""
        if self.cgroup is not None:
            leaf = cgroups.worker_leaf(self.cgroup, worker)
            cgroups.kill(leaf)
            self.doomed.add(leaf)

    def kill_strays(self) -> None:
        """Kill every child that is not a worker (orphans of dead workers' jobs); their SIGCHLD reaps them."""
        for pid in processes.children(os.getpid()):
            if pid not in self.workers and pid not in self.spared:
                processes.freeze_and_kill(pid, include_worker=True)
        self.doomed = {leaf for leaf in self.doomed if not cgroups.remove(leaf)}

    def shutdown(self) -> NoReturn:
        for pid in self.workers:
            processes.kill_job(pid)
            self.end_job_of(pid)
        self.workers.clear()
        self.kill_strays()
        if self.cgroup is not None:  # wait a little for the dead, so that no empty cgroup is left behind
            deadline = time.monotonic() + _SHUTDOWN_REAP
            while self.doomed and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-1, os.WNOHANG)[0]:
                        pass
                self.kill_strays()
                if self.doomed:
                    time.sleep(0.005)
            cgroups.remove(self.cgroup)
        os._exit(0)


def _warn_of_threads(log: Any) -> None:
    """Threads the app's import started are alive here and in no worker: a fork copies only the thread
    that forks. An app that counts on one (a cache refresher, a metrics pusher) would silently lose it."""
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        names = ", ".join(repr(t.name) for t in others)
        log.warning(f"the app started {len(others)} thread(s) while it was imported ({names}); they do not "
                    "run in the workers, which are forked from this process, and a fork copies only the "
                    "thread that forks. Start them inside the function, or on first use in each worker",
                    threads=[t.name for t in others])


def describe(functions: Mapping[str, FunctionSpec]) -> dict[str, dict[str, Any]]:
    """What the parent needs to know of each function without importing the app itself."""
    from cmworker.app.schema import infer_schema, load_type_ids

    described = {}
    type_ids: dict[str, str] = {}
    if any(spec.edits for spec in functions.values()):
        try:
            type_ids = load_type_ids()
        except Exception as exc:
            print(f"cmworker: cannot read the ontology metadata config: {exc}", file=sys.stderr)
    for name, spec in functions.items():
        schema = None
        try:
            schema = infer_schema(spec, type_ids)
        except Exception as exc:  # a schema is a courtesy to callers; the function still runs
            print(f"cmworker: cannot infer the schema of function {name!r}: {exc}", file=sys.stderr)
        described[name] = {"streaming": spec.streaming, **spec.declared_limits(), "schema": schema}
    return described


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


if __name__ == "__main__":
    main(sys.argv)
