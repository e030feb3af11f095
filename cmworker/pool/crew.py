"""The worker processes, parent side: the template that forks them, and one slot per worker.

Mechanism, not policy: the crew starts the template, spawns workers until the pool has its number, finds
a worker by pid, backs off when fresh workers keep dying, and releases a dead worker's fds. What a death
means for a job is decided by the pool.

Workers are the template's children: it reaps them and reports each exit with its wait status. If the
template dies, its workers live on, re-parented to init (or to cmworker itself when it is PID 1), and
nobody reports them any more. So the crew holds a pidfd for every worker from the moment it learns its
pid, and watches those of the orphans (``watch_orphan``): a pidfd turns readable when its process
exits, whoever reaps it. The exit status is then unknown; the pool says so in the answer. A live
template's workers are watched too, only to continue a template a job stopped (``_resume_templates``).

A reload (``cmworker dev``) starts a second template beside the first (``reload``). Once it is ready
the two swap: the crew's ``generation`` goes up, workers are spawned from the new template, and the old
one stays, retired, until the last worker of its generation has exited, so the jobs running there finish
on the old code. Until the new template is ready (or if its import fails) nothing changes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import signal
from collections.abc import Callable

from cmworker.pool import processes
from cmworker.pool.jobs import OutputLine
from cmworker.pool.messages import Message, Spawned, TemplateFailed, TemplateReady
from cmworker.pool.options import PoolOptions
from cmworker.pool.slot import READ_SIZE, Slot
from cmworker.pool.template_link import TemplateLink
from cmworker.pool.timers import Timer

_RESPAWN_BACKOFF_MAX = 2.0


class Crew:
    """The template (``template``) and the workers' slots (``slots``, by slot id)."""

    def __init__(self, options: PoolOptions, selector: selectors.BaseSelector, clock: Callable[[], float],
                 after: Callable[..., Timer], on_message: Callable[[Message], None],
                 on_output: Callable[[OutputLine], None], on_template_exit: Callable[[int, bool], None]) -> None:
        self.options = options
        self.selector = selector
        self.clock = clock
        self.after = after
        self.template = TemplateLink(options, selector, on_message, on_output, on_template_exit)
        self.slots: dict[int, Slot] = {}
        self.startup_failures = 0  # fresh workers that died in a row before taking a job
        self._by_pid: dict[int, Slot] = {}
        self._ids = itertools.count(1)
        self._backoff: Timer | None = None
        self._buffer = bytearray(READ_SIZE)  # every slot's reads: one loop thread reads them all
        self.on_output = on_output
        self.generation = 0                         # of the template now forking workers
        self._generation_of: dict[int, int] = {}    # slot id -> generation of the template that forked it
        self.next: TemplateLink | None = None       # a reload's template while it imports the app
        self._retired: dict[int, TemplateLink] = {}  # generation -> old template, until its workers are gone
        self._closing: list[TemplateLink] = []       # templates dropped, closed on the loop's next turn

    def pids(self) -> list[int]:
        return [s.pid for s in list(self.slots.values()) if s.pid is not None and s.state != "dead"]

    def maintain(self, on_message: Callable[[Slot, Message], None], on_broken: Callable[[Slot, str], None],
                 on_line: Callable[[OutputLine], None]) -> None:
        """Start the template if there is none; once it is ready, spawn workers up to the pool's size.

        Nothing while backing off after crashes.
        """
        if self._backoff is not None and not self._backoff.cancelled:
            return
        if self.template.state == "none":
            self.template.start()
            return
        if self.template.state != "ready":
            return
        live = sum(s.state in ("starting", "idle", "busy") and not self.stale(s) for s in self.slots.values())
        for _ in range(self.options.workers - live):
            slot, worker_fds = Slot.open(next(self._ids), self.selector, self.clock, self._buffer, on_message,
                                         on_broken, on_line)
            self.slots[slot.id] = slot
            self._generation_of[slot.id] = self.generation
            try:
                self.template.spawn(slot.id, worker_fds)
            except OSError:  # the template just died: reading its death, next, ends this slot
                return

    def spawned(self, message: Spawned) -> Slot | None:
        """The template forked the worker of a slot: its pid, which only the template may tell (a pid
        from the worker itself could name any process, and the pool kills a worker's process group)."""
        slot = self.slots.get(message.slot)
        if slot is not None and slot.pid is None:
            slot.pid = message.pid
            self._by_pid[message.pid] = slot
            with contextlib.suppress(AttributeError, OSError):  # no pidfds before Linux 5.3
                slot.pidfd = os.pidfd_open(message.pid)
            slot.watch_exit(self._resume_templates)
        return slot

    def _resume_templates(self, slot: Slot) -> None:
        """A worker ended; its template is to reap it, report how, and fork its replacement. A job can
        stop the template (SIGSTOP to ``os.getppid()``): then a sibling that died was never reported, and
        its job waited for its timeout, or for ever. Continue the templates; this worker's watch ends here
        (readable until reaped), and its template's report does the rest."""
        slot.unwatch_exit()
        for link in (self.template, *self._retired.values()):
            link.resume()

    def watch_orphan(self, slot: Slot, on_exit: Callable[[Slot], None]) -> bool:
        """The template died: watch this worker's own exit instead; False for one that cannot be watched
        (still starting, or no pidfd)."""
        if slot.orphan:  # of an earlier template, watched already
            return True
        if slot.state == "starting" or not slot.watch_exit(on_exit):
            return False
        slot.orphan = True
        return True

    def forget(self, pid: int) -> Slot | None:
        """The slot of a worker that has exited, which no later message may name again."""
        return self._by_pid.pop(pid, None)

    def started(self) -> None:
        """A fresh worker came up: the crash-loop count starts over."""
        self.startup_failures = 0

    def startup_failed(self, limit: int) -> bool:
        """Count a worker (or template) that died at start-up; True once ``limit`` did so in a row.

        Below the limit, spawning pauses for a backoff that doubles with each failure.
        """
        self.startup_failures += 1
        if self.startup_failures >= limit:
            return True
        delay = min(_RESPAWN_BACKOFF_MAX, 0.05 * 2 ** (self.startup_failures - 1))
        self._backoff = self.after(delay, self._end_backoff)
        return False

    def _end_backoff(self) -> None:
        self._backoff = None

    def retire(self, slot: Slot) -> None:
        """Recycle a worker: closing its socket makes it exit; a replacement is spawned at once."""
        slot.state = "retiring"
        slot.close_socket()

    def release(self, slot: Slot) -> None:
        """The worker is gone: close its fds and forget it."""
        if slot.pid is not None:
            self._by_pid.pop(slot.pid, None)
        slot.close_socket()
        slot.close_output()
        slot.close_pidfd()
        slot.state = "dead"
        del self.slots[slot.id]
        self._generation_of.pop(slot.id, None)
        if self._retired:
            self.after(0.0, self._close_idle_templates)

    def close(self) -> None:
        """Kill every worker left and end the template."""
        for slot in list(self.slots.values()):
            if slot.pid is not None:
                processes.kill_group(slot.pid, signal.SIGKILL)
            slot.close_socket()
            slot.close_output()
            slot.close_pidfd()
        self.slots.clear()
        for link in [self.next, *self._retired.values(), *self._closing]:
            if link is not None:
                link.close()
        self.next = None
        self._retired.clear()
        self._closing.clear()
        self.template.close()  # it kills any worker left and exits

    # -- reload: a new template beside the old one ----------------------------------------------

    def stale(self, slot: Slot) -> bool:
        """Whether the worker was forked by a template a reload has replaced."""
        return self._generation_of.get(slot.id, self.generation) != self.generation

    def reload(self, on_ready: Callable[[TemplateReady], None], on_failed: Callable[[str], None],
               remove_idle: Callable[[Slot], bool], on_gone: Callable[[Slot], None],
               check: Callable[[str], str | None] | None = None) -> None:
        """Start a new template importing the app afresh. Once it is ready it takes over (``generation`` goes
        up), the old workers retire (``retire_stale``) and ``on_ready(TemplateReady)`` is called;
        ``on_failed(reason)`` if it cannot import the app, the old template going on as before. A reload
        asked during another replaces that one. Should the old template die while its workers finish,
        their exits are watched through their pidfds and told to ``on_gone``. ``check(functions JSON)``
        may refuse the new app with a reason, as a failed import is."""
        if self.next is not None:
            self._drop(self.next)

        def on_message(message: Message) -> None:
            problem = None
            if isinstance(message, TemplateReady):
                problem = check(message.functions) if check is not None else None
            elif isinstance(message, TemplateFailed):
                problem = message.reason
            if isinstance(message, TemplateReady) and problem is None:
                self._swap(link, on_gone)
                self.retire_stale(remove_idle)
                on_ready(message)
            elif problem is not None:
                self._drop(link)
                on_failed(problem)

        def on_exit(status: int, was_starting: bool) -> None:
            self.next = None
            on_failed(f"the app crashed while it was being imported (exit status {status})")

        link = TemplateLink(self.options, self.selector, on_message, self.on_output, on_exit)
        link.start()
        self.next = link

    def retire_stale(self, remove_idle: Callable[[Slot], bool]) -> None:
        """After a swap: the old idle workers retire now, the busy ones after their job (one sent ahead to
        them runs first: it is in their socket already, and the pool marks it their last)."""
        for slot in list(self.slots.values()):
            if self.stale(slot) and remove_idle(slot):
                self.retire(slot)
            elif self.stale(slot) and slot.next is None:
                slot.retiring = True

    def _swap(self, link: TemplateLink, on_gone: Callable[[Slot], None]) -> None:
        old, self.template, self.next = self.template, link, None
        link.state = "ready"
        link.on_message = old.on_message  # from now on it forks the pool's workers
        link.on_exit = old.on_exit
        generation = self.generation
        old.on_exit = lambda status, was_starting: self._retired_died(generation, on_gone)
        self._retired[self.generation] = old
        self.generation += 1
        self.after(0.0, self._close_idle_templates)

    def _retired_died(self, generation: int, on_gone: Callable[[Slot], None]) -> None:
        """A retired template died before its last worker: nobody reports those workers' exits any more."""
        for slot in [s for s in self.slots.values() if self._generation_of.get(s.id) == generation]:
            if not self.watch_orphan(slot, on_gone):  # still starting, or no pidfd: it goes now
                if slot.pid is not None:
                    processes.kill_group(slot.pid, signal.SIGKILL)
                on_gone(slot)

    def _drop(self, link: TemplateLink) -> None:
        if link is self.next:
            self.next = None
        link.on_exit = lambda status, was_starting: None
        # Later, on the loop's timers: this may run inside the link's own read, or in a batch of events
        # that still holds one for its pipes. (Or in ``close``, if the pool ends first.)
        self._closing.append(link)
        self.after(0.0, self._close_dropped)

    def _close_dropped(self) -> None:
        while self._closing:
            self._closing.pop().close()

    def _close_idle_templates(self) -> None:
        """Close each retired template once no worker it forked is left."""
        busy = set(self._generation_of.values())
        for generation in [g for g in self._retired if g not in busy]:
            self._drop(self._retired.pop(generation))
