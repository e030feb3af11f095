"""The parent's end of the worker template: its process, its control socket and its output pipes.

The template is started as a fresh interpreter (``python -m cmworker.pool.template``) and handed the
pool's options. From then on the pool talks to it over one SOCK_SEQPACKET control socket: ``Spawn``
(with the new worker's fds) goes out; ``TemplateReady``, ``TemplateFailed``, ``Spawned`` and
``Exited`` come back. What the template prints (the app's import-time output) is passed on as output
lines. When the control socket ends, the template is gone: its exit status is read and reported.

Only the template may speak on the control socket, but a new worker holds it too for a moment after
its fork (until it closes it), and the app's fork hooks run in that moment. So the kernel is asked to
tell each packet's sender (``SO_PASSCRED``): a packet from any process but the template is dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable

from cmworker.pool.jobs import OutputLine
from cmworker.pool.messages import (
    MAX_CONTROL_MESSAGE,
    TEMPLATE_MESSAGES,
    Message,
    ProtocolError,
    Spawn,
    pack_packet,
    unpack_packet,
)
from cmworker.pool.options import PoolOptions
from cmworker.pool.output import LineReader

log = logging.getLogger("cmworker.supervisor")

_UCRED = struct.Struct("3i")  # what SCM_CREDENTIALS carries: pid, uid, gid
_PASSCRED = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")


class TemplateLink:
    """One template at a time: ``start`` it, ``spawn`` workers through it, learn of its death, ``close`` it.

    ``state`` is ``none`` (not running), ``starting`` (importing the app) or ``ready`` (the pool sets it
    when ``TemplateReady`` arrives). Messages go to ``on_message``, lines to ``on_output``, and its death
    to ``on_exit(status, was_starting)``.
    """

    def __init__(self, options: PoolOptions, selector: selectors.BaseSelector,
                 on_message: Callable[[Message], None], on_output: Callable[[OutputLine], None],
                 on_exit: Callable[[int, bool], None]) -> None:
        self.options = options
        self.selector = selector
        self.on_message, self.on_output, self.on_exit = on_message, on_output, on_exit
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.state = "none"
        self._lines = LineReader()

    @property
    def pid(self) -> int | None:
        """The pid of the current (or last) template process."""
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if _PASSCRED:
            parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sys_path = json.dumps([p or os.getcwd() for p in sys.path])
        self.process = subprocess.Popen(
            [self.options.python, "-m", "cmworker.pool.template", str(child_end.fileno()), sys_path,
             self.options.to_json()],
            pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        child_end.close()
        # What the app prints while it is imported reaches the logs like any worker's output.
        for pipe, stream in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            assert pipe is not None
            self._watch_pipe(pipe.fileno(), stream)
        parent_end.setblocking(False)
        self.control = parent_end
        self.state = "starting"
        self.selector.register(parent_end, selectors.EVENT_READ, self._on_control)

    def spawn(self, slot_id: int, fds: list[int]) -> None:
        """Have the template fork a worker onto ``fds`` (its socket, stdout, stderr); closes them here."""
        assert self.control is not None
        try:
            socket.send_fds(self.control, [pack_packet(Spawn(slot_id))], fds)
        finally:
            for fd in fds:
                os.close(fd)

    def resume(self) -> None:
        """Continue the template if a job stopped it (SIGSTOP to its worker's parent); a no-op otherwise."""
        if self.process is not None and self.process.returncode is None:  # not reaped: the pid is still its
            with contextlib.suppress(OSError):
                os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        """End the template: closing the control socket makes it kill its workers and exit."""
        if self.control is not None:
            with contextlib.suppress(KeyError, ValueError):  # ended on purpose: not a death to report
                self.selector.unregister(self.control)
            self.control.close()
            self.control = None
        if self.process is None:
            return
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(pipe.fileno())
                pipe.close()

    def _on_control(self, mask: int) -> None:
        assert self.process is not None
        while self.control is not None:  # a message handled here may end this template (a reload)
            try:
                packet, sender = self._receive(self.control)
            except BlockingIOError:
                return
            except OSError:
                packet, sender = b"", None
            if not packet:
                self._lost()
                return
            if sender is not None and sender != self.process.pid:
                log.warning("a packet from pid %s on the worker template's control socket was dropped: only "
                            "the template may send there", sender)
                continue
            try:
                message = unpack_packet(packet, TEMPLATE_MESSAGES, "the template")
            except ProtocolError as exc:
                # The template has imported user code; one that sends nonsense is replaced, not believed.
                log.error("the worker template sent %s; it is killed and replaced", exc)
                self.process.kill()
                continue
            self.on_message(message)

    @staticmethod
    def _receive(control: socket.socket) -> tuple[bytes, int | None]:
        """One packet, and the pid of the process that sent it as the kernel tells it (None: not told)."""
        if not _PASSCRED:
            return control.recv(MAX_CONTROL_MESSAGE), None
        packet, ancillary, _flags, _address = control.recvmsg(MAX_CONTROL_MESSAGE, socket.CMSG_SPACE(_UCRED.size))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                return packet, _UCRED.unpack_from(data)[0]
        return packet, None

    def _lost(self) -> None:
        assert self.control is not None and self.process is not None
        self.selector.unregister(self.control)
        self.control.close()
        self.control = None
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        was_starting = self.state == "starting"
        self.state = "none"
        self.on_exit(status, was_starting)

    def _watch_pipe(self, fd: int, stream: str) -> None:
        os.set_blocking(fd, False)
        self.selector.register(fd, selectors.EVENT_READ, lambda mask: self._read_pipe(fd, stream))

    def _read_pipe(self, fd: int, stream: str) -> None:
        lines, eof = self._lines.read(fd)
        if eof:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        for raw in lines:
            self.on_output(OutputLine(None, self.pid, stream, raw.decode(errors="replace")))
