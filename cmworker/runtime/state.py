"""The runtime's memory: one FIFO queue shared by every replica, who holds which job, and the answers.

Nothing here knows HTTP. The request handlers change the state through ``JobStore``; tests read it
through ``Record``. One lock guards everything: every operation is a few dictionary updates, so a
finer scheme would cost more than it saves.

A job's life::

    queued ──GET──▶ running ──POST result──▶ done | failed
       ▲               │
       └── requeue ────┤ (the response carrying it could not be delivered)
                       └──restart notification──▶ dropped

Waiting is event-driven, never a sleep loop: a long-polling GET waits on its replica's ``Condition`` in
``_work``. Queuing a job wakes every waiting GET; a replica freeing a slot (an answer) wakes one GET of
that replica only, as only its own GETs may be held by its cap (a client that keeps a GET waiting per
worker has many held at once, and waking them all made every answer cost a thread switch per GET). A
caller waiting for answers registers a ``_Waiter`` (a countdown plus an ``Event``) on the jobs it waits
for, so a batch of n answers costs O(n), not O(n²) re-scans.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cmworker.errors import JobDropped, error_from_payload

JobStatus = Literal["queued", "running", "done", "failed", "dropped"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "dropped"})

# An error answer is a small JSON object; parsing a 30 MiB result just to learn that it is not an
# error would make large answers needlessly expensive.
_ERROR_SCAN_LIMIT = 1 << 20


@dataclass(eq=False)  # identity semantics: waiters live in sets and lists
class _Waiter:
    """A caller waiting for ``remaining`` jobs to finish."""

    remaining: int
    event: threading.Event = field(default_factory=threading.Event)

    def job_finished(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.event.set()


@dataclass(eq=False)
class Job:
    id: str
    query_type: str
    query: Any
    user_id: str
    status: JobStatus = "queued"
    replica: int | None = None  # the replica it was handed to (kept after it finished)
    answer: bytes | None = None
    message: str = ""  # why it was dropped
    waiters: list[_Waiter] = field(default_factory=list)
    handed_out_at: float | None = None
    answered_at: float | None = None
    items: list[bytes] = field(default_factory=list)  # a streaming answer's chunks as they arrived


@dataclass(frozen=True)
class JobSnapshot:
    """A job as seen at one instant (safe to read without the lock)."""

    id: str
    query_type: str
    status: JobStatus
    replica: int | None
    answer: bytes | None
    message: str
    handed_out_at: float | None = None  # time.monotonic() of the GET that took it, last time
    answered_at: float | None = None    # time.monotonic() its accepted answer was recorded

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class ResultPost:
    """One ``POST results/{jobId}`` as the runtime saw it.

    ``status`` is what the runtime answered: 204 accepted, 404/409/413/400 rejected, an injected 5xx,
    or 0 when the connection was dropped on purpose before any answer.
    """

    replica: int
    status: int
    size: int
    chunked: bool
    first_chunk_at: float | None = None  # time.monotonic() the first chunk arrived (streaming latency)


@dataclass
class ReplicaState:
    """One replica's view of the runtime: its credentials, its cap and what it holds."""

    index: int
    token: str
    session_id: str
    max_concurrent_tasks: int
    held: dict[str, Job] = field(default_factory=dict)
    max_held: int = 0
    gets: int = 0
    schemas: list[dict[str, Any]] | None = None
    restart_notifications: list[list[str]] = field(default_factory=list)


def answer_failed(body: bytes) -> bool:
    """True when an answer body is an error payload (``error_from_payload`` recognises it)."""
    stripped = body.lstrip()
    if not stripped.startswith(b"{") or len(stripped) > _ERROR_SCAN_LIMIT:
        return False
    try:
        payload = json.loads(stripped)
    except (ValueError, RecursionError):  # an error payload is a flat object: nested ~1,000 deep, it is not one
        return False
    return error_from_payload(payload) is not None


class JobStore:
    """The queue, the jobs and the replicas; every method is thread-safe."""

    def __init__(self, replicas: Sequence[ReplicaState], *, cap: bool) -> None:
        self.replicas = list(replicas)
        self.cap = cap
        self._lock = threading.Lock()
        self._work = [threading.Condition(self._lock) for _ in self.replicas]  # each replica's GETs wait on theirs
        self._items = threading.Condition(self._lock)  # a streamed item arrived, or a job finished
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._posts: dict[str, list[ResultPost]] = {}
        self._functions: dict[str, dict[str, Any]] = {}
        self._waiters: set[_Waiter] = set()
        self._closed = False

    # -- callers -----------------------------------------------------------------------------

    def submit(self, queries: Iterable[tuple[str, Any, str]], job_ids: Sequence[str] | None = None) -> list[str]:
        """Queue ``(query_type, query, user_id)`` items in order; return their job ids (new UUIDs unless
        ``job_ids`` gives them: non-empty and unused, else ``ValueError``)."""
        items = list(queries)
        ids = [str(uuid.uuid4()) for _ in items] if job_ids is None else list(job_ids)
        if len(ids) != len(items) or not all(isinstance(i, str) and i for i in ids) or len(set(ids)) < len(ids):
            raise ValueError("job ids must be distinct non-empty strings, one per query")
        jobs = [Job(job_id, query_type, query, user_id)
                for job_id, (query_type, query, user_id) in zip(ids, items, strict=True)]
        with self._lock:
            if job_ids is not None and any(job_id in self._jobs for job_id in ids):
                raise ValueError(f"a job id in {ids!r} is already taken")
            for job in jobs:
                self._jobs[job.id] = job
            self._queue.extend(jobs)
            self._wake_all()
        return [job.id for job in jobs]

    def wait_finished(self, job_ids: Sequence[str], timeout: float) -> list[JobSnapshot | None]:
        """Snapshots of ``job_ids`` once all are finished or ``timeout`` passed (``None`` = unknown id)."""
        waiter = None
        with self._lock:
            pending = [job for job in map(self._jobs.get, job_ids)
                       if job is not None and job.status not in FINISHED]
            if pending and timeout > 0 and not self._closed:
                waiter = _Waiter(len(pending))
                for job in pending:
                    job.waiters.append(waiter)
                self._waiters.add(waiter)
        if waiter is not None:
            waiter.event.wait(timeout)
            with self._lock:
                self._waiters.discard(waiter)
                for job in pending:
                    if waiter in job.waiters:
                        job.waiters.remove(waiter)
        return self.snapshots(job_ids)

    def wait_items(self, job_id: str, start: int, timeout: float) -> tuple[list[bytes], JobSnapshot] | None:
        """The items of a streaming answer from index ``start`` on, waiting up to ``timeout`` for one
        while the job runs; ``None`` for an unknown job."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if not self._closed:
                self._items.wait_for(lambda: len(job.items) > start or job.status in FINISHED, timeout)
            return job.items[start:], _snapshot(job)

    def stream_item(self, replica: int, job_id: str, index: int, data: bytes) -> None:
        """Item ``index`` of the streaming answer a replica is posting; one a replayed POST sends again
        (an earlier attempt delivered it already) is not added twice."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.replica != replica or job.status in FINISHED or index != len(job.items):
                return
            job.items.append(data)
            self._items.notify_all()

    def snapshots(self, job_ids: Iterable[str]) -> list[JobSnapshot | None]:
        with self._lock:
            return [None if job is None else _snapshot(job) for job in map(self._jobs.get, job_ids)]

    def functions(self) -> list[dict[str, Any]]:
        """Every function schema posted by any replica, the latest per name, sorted by name."""
        with self._lock:
            return [self._functions[name] for name in sorted(self._functions)]

    # -- replicas ----------------------------------------------------------------------------

    def take(self, replica: int, hold: float, cancelled: Callable[[], bool]) -> Job | None:
        """Hand the oldest queued job to ``replica``, waiting up to ``hold`` seconds for one.

        With the cap on, a replica holding ``max_concurrent_tasks`` jobs gets none until it answers
        one. Returns ``None`` after the hold, or at once when ``cancelled()`` turns true (its listener
        is going down) and the store is woken.
        """
        state = self.replicas[replica]
        deadline = time.monotonic() + hold
        with self._lock:
            state.gets += 1
            while not (self._closed or cancelled()):
                if self._queue and not (self.cap and len(state.held) >= state.max_concurrent_tasks):
                    job = self._queue.popleft()
                    job.status, job.replica = "running", replica
                    job.handed_out_at = time.monotonic()
                    state.held[job.id] = job
                    state.max_held = max(state.max_held, len(state.held))
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._work[replica].wait(remaining)
            return None

    def requeue(self, job: Job) -> None:
        """Put a job whose hand-out never reached its replica back at the head of the queue."""
        with self._lock:
            if job.status != "running" or job.replica is None:
                return
            self.replicas[job.replica].held.pop(job.id, None)
            job.status, job.replica = "queued", None
            self._queue.appendleft(job)
            self._wake_all()

    def post_result(self, replica: int, job_id: str, body: bytes, *, failed: bool,
                    chunked: bool, first_chunk_at: float | None = None) -> tuple[int, str]:
        """Record a result POST; return ``(status, message)``: 204 accepted, 404 or 409 rejected."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.replica != replica:
                status, message = 404, f"replica {replica} was never handed job {job_id!r}"
            elif job.status in FINISHED:
                status, message = 409, f"job {job_id} already {job.status}"
            else:
                status, message = 204, ""
                del self.replicas[replica].held[job_id]
                job.answer = body
                job.answered_at = time.monotonic()
                self._finish(job, "failed" if failed else "done")
            self._posts.setdefault(job_id, []).append(
                ResultPost(replica, status, len(body), chunked, first_chunk_at))
            return status, message

    def record_post(self, replica: int, job_id: str, status: int, size: int, chunked: bool) -> None:
        """Record a result POST that was refused before it reached ``post_result`` (413, faults)."""
        with self._lock:
            self._posts.setdefault(job_id, []).append(ResultPost(replica, status, size, chunked))

    def post_schemas(self, replica: int, schemas: list[dict[str, Any]]) -> None:
        with self._lock:
            self.replicas[replica].schemas = schemas
            for schema in schemas:
                self._functions[schema["functionName"]] = schema

    def restart_notification(self, replica: int) -> list[str]:
        """Drop every job ``replica`` holds (its container restarted); return their ids."""
        with self._lock:
            state = self.replicas[replica]
            dropped = list(state.held.values())
            state.held.clear()
            for job in dropped:
                job.message = (f"replica {replica} of the compute module restarted while the job was "
                               "running, so the runtime dropped it")
                job.answer = JobDropped(job.message, replica=replica).to_bytes()
                self._finish(job, "dropped")
            ids = [job.id for job in dropped]
            state.restart_notifications.append(ids)
            return ids

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Wake every long-polling GET so it re-checks whether its listener is going down."""
        with self._lock:
            self._wake_all()

    def close(self) -> None:
        """Release every waiter for good: the runtime is stopping."""
        with self._lock:
            self._closed = True
            self._wake_all()
            for waiter in self._waiters:
                waiter.event.set()

    def _wake_all(self) -> None:
        for replica in self._work:  # the lock held
            replica.notify_all()

    def _finish(self, job: Job, status: JobStatus) -> None:
        # Called with the lock held. A finished job frees a slot of its replica: one GET of it held by the
        # cap may proceed (a woken GET that finds no job waits again; the next job queued wakes them all).
        job.status = status
        for waiter in job.waiters:
            waiter.job_finished()
        job.waiters.clear()
        if job.replica is not None:
            self._work[job.replica].notify()
        self._items.notify_all()


def _snapshot(job: Job) -> JobSnapshot:
    return JobSnapshot(job.id, job.query_type, job.status, job.replica, job.answer, job.message,
                       job.handed_out_at, job.answered_at)


class Record:
    """Read-only inspection of a runtime for tests: what each replica did and what each job got."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def result_posts(self, job_id: str) -> list[ResultPost]:
        """Every result POST for ``job_id``, accepted or not, in arrival order."""
        with self._store._lock:
            return list(self._store._posts.get(job_id, ()))

    def accepted(self, job_id: str) -> int:
        """How many result POSTs for ``job_id`` were accepted (exactly one once it is answered)."""
        return sum(post.status == 204 for post in self.result_posts(job_id))

    def job(self, job_id: str) -> JobSnapshot | None:
        return self._store.snapshots([job_id])[0]

    def jobs(self) -> list[JobSnapshot]:
        """Every job ever submitted, in submission order."""
        with self._store._lock:
            return [_snapshot(job) for job in self._store._jobs.values()]

    def queued(self) -> int:
        with self._store._lock:
            return len(self._store._queue)

    def held(self, replica: int = 0) -> list[str]:
        """Ids of the jobs ``replica`` holds now (handed out, not answered or dropped)."""
        with self._store._lock:
            return list(self._store.replicas[replica].held)

    def max_held(self, replica: int = 0) -> int:
        """The most jobs ``replica`` ever held at once."""
        with self._store._lock:
            return self._store.replicas[replica].max_held

    def gets(self, replica: int = 0) -> int:
        """How many GET job requests ``replica`` made that reached the queue (faults excluded)."""
        with self._store._lock:
            return self._store.replicas[replica].gets

    def schemas(self, replica: int = 0) -> list[dict[str, Any]] | None:
        """The schemas ``replica`` posted last, or ``None`` if it never posted any."""
        with self._store._lock:
            return self._store.replicas[replica].schemas

    def restart_notifications(self, replica: int = 0) -> list[list[str]]:
        """One entry per restart notification ``replica`` posted: the job ids it dropped."""
        with self._store._lock:
            return [list(ids) for ids in self._store.replicas[replica].restart_notifications]
