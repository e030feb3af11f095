"""``EmbeddedRuntime``: a faithful emulator of Foundry's compute-module runtime, in background threads.

What a replica sees is what Foundry gives it: an HTTPS endpoint of its own (its own port, token,
session id and ``MAX_CONCURRENT_TASKS``), a CA bundle, a token *file*, the legacy
``CONNECTION_TO_RUNTIME`` file, and the environment variables naming them. All replicas draw from
one FIFO queue. Callers use a separate query API with its own token (docs/runtime.md), or
``runtime.client()``.

State directory layout (a fresh temporary directory unless ``state_dir`` is given)::

    ca.pem  server.pem  server-key.pem  caller-token
    replica-0/module-auth-token  replica-0/connection-to-runtime.json  replica-0/env.sh
    replica-1/...

Fault injection covers what the poller must survive: 5xx answers, a hanging GET, a connection cut
in the middle of a result POST, spoiled replies (trickling, lying about their length, floods of
interim replies, garbage: ``spoil_next``), connections refused for a while, and a restart. A restart keeps the
job state (queue, running jobs, answers), as a restart of Foundry's runtime keeps its queue: replicas
reconnect and post the results of the jobs they hold as if nothing happened.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from cmworker.runtime.faults import Fault, FaultKind, FaultPlan, Spoil
from cmworker.runtime.oauth import Issuer, TokenService
from cmworker.runtime.server import JOB_PATH, RESTART_PATH, RESULTS_PATH, SCHEMAS_PATH, ModuleApp, QueryApp
from cmworker.runtime.state import JobStore, Record, ReplicaState
from cmworker.runtime.tls import TlsFiles, write_tls_files
from cmworker.runtime.wire import Listener

if TYPE_CHECKING:
    from cmworker.runtime.client import Client

DEFAULT_USER_ID = "00000000-0000-0000-0000-000000000000"
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class EmbeddedRuntime:
    """The emulated runtime: ``replicas`` module endpoints sharing one queue, plus the query API.

    ``long_poll``: how long a GET job waits for work before answering 204. ``max_result_size``:
    result bodies above it get 413. ``cap``: hold a GET while its replica already holds
    ``max_concurrent_tasks`` jobs (switch off to test a client's own admission control).
    ``max_concurrent_tasks``: one number for every replica, or one per replica. ``port``: the first
    replica's port (replica i gets ``port + i``); 0 picks free ports.
    """

    def __init__(self, replicas: int = 1, *, long_poll: float = 5.0, max_result_size: int = 32 * 2**20,
                 cap: bool = True, max_concurrent_tasks: int | Sequence[int] = 1,
                 state_dir: str | os.PathLike[str] | None = None, host: str = "127.0.0.1",
                 port: int = 0, query_port: int = 0, token_lifetime: float = 3600.0) -> None:
        caps = _per_replica(max_concurrent_tasks, replicas)
        if long_poll < 0 or max_result_size < 0:
            raise ValueError("long_poll and max_result_size must be >= 0")
        self.host = host
        self.advertised_host = _WILDCARDS.get(host, host)
        self.long_poll = long_poll
        self.max_result_size = max_result_size
        self.caller_token = _token(32)
        self._base_port = port
        self._query_port = query_port
        self._requested_state_dir = Path(state_dir) if state_dir is not None else None
        self._state_dir: Path | None = None
        self.store = JobStore([ReplicaState(i, _token(32), str(uuid.uuid4()), caps[i])
                               for i in range(replicas)], cap=cap)
        self.record = Record(self.store)
        self.oauth = Issuer(token_lifetime)
        self._faults = FaultPlan()
        self._modules: list[Listener] = []
        self._query: Listener | None = None
        self._tls: TlsFiles | None = None
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()  # a delayed re-open never races stop()
        self._timers: list[threading.Thread] = []
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> EmbeddedRuntime:
        """Mint the certificates, bind every port, write the state files. Returns ``self``."""
        if self._started:
            raise RuntimeError("this EmbeddedRuntime was already started")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        state_dir = self._make_state_dir()
        hosts = [self.advertised_host, "127.0.0.1", "localhost"]
        self._tls = write_tls_files(state_dir, hosts + ([self.host] if self.host not in _WILDCARDS else []))
        context = self._tls.server_context()
        job_extras = {"temporaryCredentialsAuthToken": _token(16),
                      "authHeader": f"Bearer {_token(24)}"}
        for replica in self.store.replicas:
            port = self._base_port + replica.index if self._base_port else 0
            app = ModuleApp(replica.index, self.store, self._faults, self.long_poll, self.max_result_size,
                            job_extras)
            self._modules.append(Listener(f"replica-{replica.index}", self.host, port, context, app,
                                          self.store.wake))
        self._query = Listener("query-api", self.host, self._query_port, context,
                               TokenService(self.oauth, QueryApp(self.store, self.caller_token, DEFAULT_USER_ID)),
                               self.store.wake)
        for listener in [*self._modules, self._query]:
            listener.open()
        self._write_state_files(state_dir)

    def stop(self) -> None:
        """Stop serving, release every waiter and remove a temporary state directory. Idempotent."""
        with self._lifecycle:
            self._stopping.set()
        self.store.close()
        for listener in [*self._modules, *([self._query] if self._query else [])]:
            listener.close()
        for timer in self._timers:
            timer.join(5.0)
        if self._requested_state_dir is None and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRuntime:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- looking inside (read-only: for tests and the soak) -----------------------------------

    def module_listener(self, replica: int = 0) -> Listener:
        """The listener of ``replica``'s module endpoints; a test may wrap its ``app`` to see or change
        what that replica is sent."""
        return self._modules[replica]

    def open_connections(self) -> int:
        """Connections being served at this moment, on every module endpoint and the query API."""
        listeners = [*self._modules, *([self._query] if self._query else [])]
        return sum(listener.open_connections() for listener in listeners)

    def pending_faults(self) -> list[Fault]:
        """The armed faults that no request has taken yet, oldest first."""
        return self._faults.pending()

    # -- addresses and environment -------------------------------------------------------------

    @property
    def replicas(self) -> int:
        return len(self.store.replicas)

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise RuntimeError("the runtime is not started")
        return self._state_dir

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def ports(self) -> list[int]:
        """The module port of each replica."""
        return [listener.port for listener in self._modules]

    @property
    def query_url(self) -> str:
        """Base URL of the query API (``https://host:port``)."""
        if self._query is None:
            raise RuntimeError("the runtime is not started")
        return f"https://{_url_host(self.advertised_host)}:{self._query.port}"

    def token_path(self, replica: int = 0) -> Path:
        return self.state_dir / f"replica-{replica}" / "module-auth-token"

    def env(self, replica: int = 0) -> dict[str, str]:
        """The environment Foundry would inject into ``replica``'s container."""
        state = self.store.replicas[replica]
        base = f"https://{_url_host(self.advertised_host)}:{self.ports[replica]}"
        ca = str(self.ca_path)
        return {
            "GET_JOB_URI": base + JOB_PATH,
            "POST_RESULT_URI": base + RESULTS_PATH,
            "POST_SCHEMA_URI": base + SCHEMAS_PATH,
            "RESTART_NOTIFICATION_URI": base + RESTART_PATH,
            "RUNTIME_HOST": self.advertised_host,
            "RUNTIME_PORT": str(self.ports[replica]),
            "MODULE_AUTH_TOKEN": str(self.token_path(replica)),
            "CONNECTIONS_TO_OTHER_PODS_CA_PATH": ca,
            "DEFAULT_CA_PATH": ca,
            "MAX_CONCURRENT_TASKS": str(state.max_concurrent_tasks),
            "COMPUTE_SESSION_ID": state.session_id,
            "CONNECTION_TO_RUNTIME": str(self.state_dir / f"replica-{replica}" / "connection-to-runtime.json"),
        }

    @property
    def foundry_host(self) -> str:
        """``host:port`` where this runtime plays Foundry's own APIs (the OAuth token endpoint)."""
        return self.query_url.removeprefix("https://")

    def application_env(self) -> dict[str, str]:
        """What Foundry gives a module running with application permissions: the client the runtime
        issued, and the CA its endpoints use. ``FOUNDRY_HOST`` is cmworker's, not Foundry's: where the
        token endpoint is (in Foundry, the enrollment's host, which the app knows)."""
        return {"CLIENT_ID": self.oauth.client_id, "CLIENT_SECRET": self.oauth.client_secret,
                "DEFAULT_CA_PATH": str(self.ca_path), "FOUNDRY_HOST": self.foundry_host}

    def pipeline_env(self, resources: Mapping[str, tuple[str, str | None]]) -> dict[str, str]:
        """What Foundry gives a pipeline-mode module: ``BUILD2_TOKEN`` (a file holding a fresh job token)
        and ``RESOURCE_ALIAS_MAP`` (a file mapping each alias to ``{"rid", "branch"}``), written in the
        state directory; with ``DEFAULT_CA_PATH`` and ``FOUNDRY_HOST`` as in ``application_env``."""
        directory = self.state_dir / "pipeline"
        directory.mkdir(mode=0o700, exist_ok=True)
        token_file, alias_file = directory / "build2-token", directory / "resource-alias-map.json"
        _write_private(token_file, self.oauth.job_token())
        table = {alias: {"rid": rid, "branch": branch} for alias, (rid, branch) in resources.items()}
        _write_private(alias_file, json.dumps(table, indent=2))
        return {"BUILD2_TOKEN": str(token_file), "RESOURCE_ALIAS_MAP": str(alias_file),
                "DEFAULT_CA_PATH": str(self.ca_path), "FOUNDRY_HOST": self.foundry_host}

    def sources_env(self, sources: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """The files Foundry mounts for a module's sources, written in the state directory, and the
        variables naming them. ``sources``: by source API name, ``{"secrets": {name: value}, "url": ...,
        "configuration": ...}`` (each optional). The official SDK's source helpers (``get_source``,
        ``get_source_secret``) and cmworker's context read these same files."""
        directory = self.state_dir / "sources"
        directory.mkdir(mode=0o700, exist_ok=True)
        credentials = {name: dict(source.get("secrets", {})) for name, source in sources.items()}
        configurations = {}
        for name, source in sources.items():
            entry: dict[str, Any] = {"secrets": credentials[name],
                                     "sourceConfiguration": source.get("configuration")}
            if source.get("url"):
                entry["httpConnectionConfig"] = {"url": source["url"], "authHeaders": {}, "queryParameters": {}}
            configurations[name] = entry
        paths = {"SOURCE_CREDENTIALS": directory / "credentials.json",
                 "SOURCE_CONFIGURATIONS_PATH": directory / "configurations.json",
                 "FOUNDRY_SERVICE_DISCOVERY_V2": directory / "service-discovery.yml"}
        _write_private(paths["SOURCE_CREDENTIALS"], json.dumps(credentials, indent=2))
        _write_private(paths["SOURCE_CONFIGURATIONS_PATH"], json.dumps(configurations, indent=2))
        _write_private(paths["FOUNDRY_SERVICE_DISCOVERY_V2"], "on_prem_proxy: []\n")  # no on-prem agents here
        return {**{name: str(path) for name, path in paths.items()}, "DEFAULT_CA_PATH": str(self.ca_path)}

    def env_exports(self, replica: int = 0) -> str:
        """``env(replica)`` as shell ``export`` lines."""
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env(replica).items())

    def client(self) -> Client:
        """A ``cmworker.Client`` for this runtime's query API."""
        from cmworker.runtime.client import Client

        return Client(self.query_url, token=self.caller_token, ca=self.ca_path)

    def submit(self, query_type: str, query: Any = None, *, user_id: str = DEFAULT_USER_ID,
               job_id: str | None = None) -> str:
        """Queue one query in-process (no HTTP); return its job id. ``query`` must be JSON-encodable.

        ``job_id``: the id to hand it out under (any non-empty string not used before) instead of a
        fresh UUID, to see how a replica copes with ids Foundry might send.
        """
        query = {} if query is None else query
        json.dumps(query)  # fail here, not later in a GET that has already taken the job
        return self.store.submit([(query_type, query, user_id)], None if job_id is None else [job_id])[0]

    # -- fault injection (module endpoints only; the query API is never disturbed) -------------

    def fail_next_gets(self, count: int = 1, status: int = 503, *, replica: int | None = None) -> None:
        """Answer the next ``count`` GET job requests with ``status`` (no job is handed out)."""
        self._faults.arm(Fault("get_status", replica, _status(status)), count)

    def fail_next_results(self, count: int = 1, status: int = 503, *, replica: int | None = None) -> None:
        """Answer the next ``count`` result POSTs with ``status``; their results are not recorded."""
        self._faults.arm(Fault("result_status", replica, _status(status)), count)

    def hang_next_get(self, seconds: float, *, replica: int | None = None) -> None:
        """Hold the next GET ``seconds`` before it even starts its long poll."""
        self._faults.arm(Fault("get_hang", replica, seconds=seconds))

    def drop_next_result(self, *, replica: int | None = None) -> None:
        """Cut the connection halfway through the next result POST, without answering it."""
        self._faults.arm(Fault("result_drop", replica))

    def spoil_next(self, endpoint: Literal["get", "result", "schemas", "restart"], spoil: Spoil, count: int = 1,
                   *, interval: float = 0.0, seconds: float = 120.0, replica: int | None = None) -> None:
        """Spoil the replies to the next ``count`` requests to ``endpoint`` (see ``faults.Spoil`` for how).

        ``interval``: the pause between trickled bytes, interim replies or pieces of an endless body;
        ``seconds``: the longest a trickle, flood or endless body goes on. A spoiled reply to a GET that
        took a job hands the job out only if the reply was readable and written in full (a trickle or a
        flood the client waited for); otherwise the job goes back to the head of the queue. A spoiled
        result reply comes after the answer was recorded, so a retried POST is answered 409.
        """
        if spoil not in get_args(Spoil):
            raise ValueError(f"no such spoil: {spoil!r}")
        if interval < 0 or seconds < 0:
            raise ValueError("interval and seconds must be >= 0")
        kind = cast(FaultKind, f"{endpoint}_spoil")
        if kind not in get_args(FaultKind):
            raise ValueError(f"no such endpoint: {endpoint!r}")
        self._faults.arm(Fault(kind, replica, seconds=seconds, spoil=spoil, interval=interval), count)

    def clear_faults(self) -> None:
        self._faults.clear()

    def refuse_connections(self, seconds: float, *, replica: int | None = None) -> None:
        """Stop listening (connections refused, open ones cut) for ``seconds``, then listen again
        on the same port(s). Returns at once."""
        listeners = self._modules if replica is None else [self._modules[replica]]
        for listener in listeners:
            listener.close()
        timer = threading.Thread(target=self._reopen_after, args=(listeners, seconds),
                                 name="runtime-reopen", daemon=True)
        self._timers.append(timer)
        timer.start()

    def restart(self) -> None:
        """Stop and restart every module endpoint on the same ports. Jobs, holds and answers survive."""
        for listener in self._modules:
            listener.close()
        for listener in self._modules:
            listener.open()

    def _reopen_after(self, listeners: list[Listener], seconds: float) -> None:
        if self._stopping.wait(seconds):
            return
        with self._lifecycle:
            if self._stopping.is_set():
                return
            for listener in listeners:
                listener.open()

    # -- files -------------------------------------------------------------------------------

    def _make_state_dir(self) -> Path:
        if self._requested_state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="cmworker-runtime-"))
        else:
            self._state_dir = self._requested_state_dir
            self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._state_dir

    def _write_state_files(self, state_dir: Path) -> None:
        _write_private(state_dir / "caller-token", self.caller_token)
        for replica in self.store.replicas:
            directory = state_dir / f"replica-{replica.index}"
            directory.mkdir(mode=0o700, exist_ok=True)
            # Foundry's token file has no trailing newline, and the official SDK does not strip it.
            _write_private(self.token_path(replica.index), replica.token)
            connection = {"host": self.advertised_host, "port": self.ports[replica.index],
                          "getJobPath": JOB_PATH, "postResultPath": RESULTS_PATH,
                          "moduleAuthToken": replica.token, "trustStorePath": str(self.ca_path)}
            _write_private(directory / "connection-to-runtime.json", json.dumps(connection, indent=2))
            _write_private(directory / "env.sh", self.env_exports(replica.index))

    def __repr__(self) -> str:
        where = f"query API {self.query_url}, replicas on {self.ports}" if self._query else "not started"
        return f"<EmbeddedRuntime {where}>"


def _token(nbytes: int) -> str:
    """A random URL-safe token that never starts with "-", so it can follow a flag on a command line."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


def _per_replica(value: int | Sequence[int], replicas: int) -> list[int]:
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    caps = [value] * replicas if isinstance(value, int) else list(value)
    if len(caps) != replicas or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in caps):
        raise ValueError(f"max_concurrent_tasks must be an int >= 1 or one per replica, got {value!r}")
    return caps


def _status(status: int) -> int:
    if not 100 <= status <= 599:
        raise ValueError(f"not an HTTP status: {status}")
    return status


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
