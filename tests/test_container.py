"""The container image: the Dockerfile's rules, and the container's start reproduced without Docker.

No Docker engine runs on this machine (or in CI), so the image itself is never built here. Instead:

* the Dockerfile is read and held to Foundry's rules (linux/amd64, numeric non-root user, pinned base
  image, an entrypoint that is the installed ``cmworker`` console script, files that exist);
* the image's contents are rebuilt the way its build stage builds them — a wheel from the same source
  files, installed without extras into a fresh virtualenv — and the entrypoint command is run as PID 1
  of a new PID namespace (``unshare --pid --fork --mount-proc``), as uid 5000 when an interpreter
  usable by that uid exists, with the example app and its cmworker.toml, against the embedded runtime
  over HTTPS, discovered through the same environment variables Foundry sets.
"""

from __future__ import annotations

import configparser
import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests import wheel_harness

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
APP_DIR = ROOT / "examples" / "routes"
WAIT = 30.0          # a hard deadline for every wait below; nothing here should come close
CONTAINER_UID = 5000

# ---------------------------------------------------------------------------------------------
# (a) The Dockerfile, read as data
# ---------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str                 # the FROM image, ARGs expanded
    flags: dict[str, str]     # --platform=...
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped, global ARGs expanded in FROM."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending.strip():
        logical.append(pending)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], ""), args).split()
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            rest = [w for w in words if not w.startswith("--")]
            name = rest[2] if len(rest) == 3 and rest[1].upper() == "AS" else None
            stages.append(Stage(rest[0], flags, name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> (name, tag, digest)."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def check_platform(stages: list[Stage]) -> list[str]:
    return [f"stage FROM {s.base} is not built for linux/amd64 (--platform={s.flags.get('platform')})"
            for s in stages if s.flags.get("platform") != "linux/amd64"]


def check_pinned_base(stages: list[Stage]) -> list[str]:
    """Every external base image names an exact version (x.y.z) in its tag; a digest, if any, is sha256."""
    problems = []
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue  # FROM an earlier stage
        _name, tag, digest = split_image(stage.base)
        if tag is None or tag == "latest" or not re.search(r"\d+\.\d+\.\d+", tag):
            problems.append(f"base image {stage.base} is not pinned to an exact version tag")
        if digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            problems.append(f"base image {stage.base} has a malformed digest")
    return problems


def check_user(stages: list[Stage]) -> list[str]:
    users = stages[-1].all("USER") if stages else []
    if not users:
        return ["the final stage has no USER: it would run as root"]
    uid, _, gid = users[-1].args.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return [f"USER {users[-1].args} is not numeric"]
    if int(uid) == 0:
        return ["USER is root (uid 0)"]
    return []


def console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    entries = config.get("options.entry_points", "console_scripts", fallback="")
    scripts = {}
    for line in entries.strip().splitlines():
        name, _, target = line.partition("=")
        scripts[name.strip()] = target.strip()
    return scripts


def check_entrypoint(stages: list[Stage]) -> list[str]:
    entrypoints = stages[-1].all("ENTRYPOINT") if stages else []
    if not entrypoints:
        return ["the final stage has no ENTRYPOINT"]
    try:
        argv = json.loads(entrypoints[-1].args)
    except ValueError:
        return [f"ENTRYPOINT {entrypoints[-1].args} is not in exec form: signals would go to /bin/sh"]
    if argv != ["cmworker", "run"]:
        return [f"ENTRYPOINT is {argv}, not [\"cmworker\", \"run\"]"]
    if argv[0] not in console_scripts():
        return [f"{argv[0]!r} is not a console script of setup.cfg"]
    return []


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (the last matching pattern wins; ``!`` re-includes)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = fnmatch.translate(body).replace(".*", "[^/]*")
        if body.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(body[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def read_dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def copied_sources(stages: list[Stage]) -> list[tuple[Stage, str]]:
    """(stage, source path) for every COPY from the build context."""
    out = []
    for stage in stages:
        for ins in stage.all("COPY"):
            words = shlex.split(ins.args)
            if any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            out.extend((stage, src.rstrip("/")) for src in sources)
    return out


def check_copies(stages: list[Stage], root: Path) -> list[str]:
    problems = []
    patterns = read_dockerignore(root)
    for _stage, src in copied_sources(stages):
        if not (root / src).exists():
            problems.append(f"COPY {src}: no such file in the tree")
        elif dockerignored(src, patterns):
            problems.append(f"COPY {src}: excluded from the build context by .dockerignore")
    return problems


def check_app(stages: list[Stage], root: Path) -> list[str]:
    """The final stage copies an app and its cmworker.toml, and every local module the app imports."""
    final = [src for stage, src in copied_sources(stages) if stage is stages[-1]]
    tomls = [src for src in final if src.endswith("cmworker.toml")]
    if not tomls:
        return ["the final stage copies no cmworker.toml"]
    toml_path = root / tomls[0]
    app = re.search(r'^app\s*=\s*"([^"]+)"', toml_path.read_text(), re.M)
    if app is None:
        return [f"{tomls[0]} names no app"]
    app_src = os.path.normpath(f"{Path(tomls[0]).parent.as_posix()}/{app[1]}")  # "./app.py" is "app.py"
    if app_src not in final:
        return [f"the app {app_src} named by {tomls[0]} is not copied"]
    problems = []
    for module in re.findall(r"^(?:import|from)\s+(\w+)", (root / app_src).read_text(), re.M):
        local = os.path.normpath(f"{Path(app_src).parent.as_posix()}/{module}.py")
        if (root / local).exists() and local not in final:
            problems.append(f"the app imports {module}, but {local} is not copied")
    return problems


def check_install(stages: list[Stage]) -> list[str]:
    """The final stage installs a wheel built in an earlier stage, with no extras."""
    runs = " ".join(i.args for i in stages[-1].all("RUN")) if stages else ""
    installs = re.findall(r"pip install ([^&;]+)", runs)
    if not installs:
        return ["the final stage does not pip install anything"]
    problems = []
    for args in installs:
        if ".whl" not in args:
            problems.append(f"pip install {args.strip()} does not install the built wheel")
        if "[" in args or "-e " in args:
            problems.append(f"pip install {args.strip()} installs extras or an editable tree")
    if not any("pip wheel" in i.args for s in stages[:-1] for i in s.all("RUN")):
        problems.append("no build stage runs pip wheel")
    return problems


CHECKS: dict[str, Callable[[list[Stage]], list[str]]] = {
    "platform": check_platform,
    "pinned": check_pinned_base,
    "user": check_user,
    "entrypoint": check_entrypoint,
    "copies": lambda stages: check_copies(stages, ROOT),
    "app": lambda stages: check_app(stages, ROOT),
    "install": check_install,
}


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.mark.parametrize("check", list(CHECKS))
def test_the_dockerfile_follows_the_rule(stages: list[Stage], check: str) -> None:
    assert CHECKS[check](stages) == []


def test_the_dockerfile_has_a_build_stage_and_a_runtime_stage(stages: list[Stage]) -> None:
    assert len(stages) == 2
    assert stages[0].name == "build"
    assert split_image(stages[0].base) == split_image(stages[1].base)


def test_the_entrypoint_resolves_to_cmworkers_command_line() -> None:
    """`cmworker` is a console script pointing at cmworker.cli:main, and `run` is one of its commands."""
    import importlib

    module, _, attr = console_scripts()["cmworker"].partition(":")
    cli = importlib.import_module(module)
    assert callable(getattr(cli, attr))
    assert "run" in cli.COMMANDS


# Each rule must be able to fail: a broken variant of the real Dockerfile is caught by the right check.
BROKEN = [
    ("platform", "FROM --platform=linux/amd64 ${PYTHON_IMAGE}\n", "FROM ${PYTHON_IMAGE}\n"),
    ("pinned", "ARG PYTHON_IMAGE=python:3.12.13-slim-trixie@", "ARG PYTHON_IMAGE=python:latest@"),
    ("pinned", "ARG PYTHON_IMAGE=python:3.12.13-slim-trixie@", "ARG PYTHON_IMAGE=python:3.12-slim@"),
    ("user", "USER 5000:5000", "USER app"),
    ("user", "USER 5000:5000", "USER 0"),
    ("user", "USER 5000:5000", ""),
    ("entrypoint", 'ENTRYPOINT ["cmworker", "run"]', "ENTRYPOINT cmworker run"),
    ("entrypoint", 'ENTRYPOINT ["cmworker", "run"]', 'ENTRYPOINT ["tini", "--", "cmworker", "run"]'),
    ("copies", "examples/routes/routing.py", "examples/routes/missing.py"),
    ("app", "examples/routes/app.py examples/routes/routing.py", "examples/routes/app.py"),
    ("install", "pip install /tmp/wheels/cmworker-*.whl", "pip install '/tmp/wheels/cmworker-*.whl[test]'"),
]


@pytest.mark.parametrize(("check", "old", "new"), BROKEN)
def test_a_dockerfile_breaking_the_rule_is_caught(check: str, old: str, new: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the variant no longer applies to the Dockerfile: {old!r}"
    assert CHECKS[check](parse_dockerfile(text.replace(old, new, 1)))


def test_dockerignore_keeps_what_is_copied_and_drops_the_rest() -> None:
    patterns = read_dockerignore(ROOT)
    assert not dockerignored("cmworker/replica/poller.py", patterns)
    assert not dockerignored("examples/routes/app.py", patterns)
    assert dockerignored(".venv/bin/python", patterns)
    assert dockerignored("tests/test_serve.py", patterns)
    assert dockerignored("cmworker/__pycache__/poller.cpython-312.pyc", patterns)


# ---------------------------------------------------------------------------------------------
# (b) The container's start, reproduced: wheel -> fresh virtualenv -> PID 1 of a new PID namespace
# ---------------------------------------------------------------------------------------------

# Functions for checking process behaviour, added next to the example app in the reproduced image
# only (the image itself ships the app unchanged). `from app import *` keeps every example function.
CHECKS_APP = '''
import os
import time

import cmworker
from app import *  # noqa: F403


@cmworker.function
def hold(context, event):
    """Signal that the job started (a marker file), then run for a while."""
    open(event["marker"], "w").close()
    time.sleep(event["seconds"])
    return {"held": event["seconds"]}


@cmworker.function
def spawn_orphan(context, event):
    """Leave a detached grandchild (own session) that would linger after this job, were it not killed."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(event["linger"])
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(middle, 0)
    return {"worker": os.getpid(), "grandchild": int(os.read(r, 64))}


@cmworker.function
def kill_template(context, event):
    """Kill the worker template: its workers are re-parented to PID 1, and this job still finishes."""
    os.kill(os.getppid(), 9)
    time.sleep(0.5)
    return "survived"
'''


@dataclass
class Image:
    """The reproduced image: a virtualenv with the wheel installed, an app directory, who to run as."""

    root: Path
    venv: Path
    app: Path
    run_as: list[str]     # setpriv prefix, or [] to run as root
    note: str


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def _usable_by_container_uid(python: str) -> bool:
    """Whether uid 5000 can run ``python`` and have it start another interpreter (as the pool does)."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        return False
    probe = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import ssl, json'], check=True)"
    done = _run(["setpriv", f"--reuid={CONTAINER_UID}", f"--regid={CONTAINER_UID}", "--clear-groups", "--",
                 python, "-c", probe], cwd="/")
    return done.returncode == 0


def _base_python() -> tuple[str, bool]:
    """An interpreter (>= 3.10) to base the fresh virtualenv on; True when uid 5000 can use it."""
    candidates = [getattr(sys, "_base_executable", sys.executable), "/usr/local/bin/python3", "/usr/bin/python3"]
    usable = []
    for candidate in dict.fromkeys(os.path.realpath(c) for c in candidates if c and os.path.exists(c)):
        version = _run([candidate, "-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 10))"])
        if version.stdout.strip() == "True":
            usable.append(candidate)
    if not usable:
        pytest.skip("no Python >= 3.10 with venv and ensurepip to build a fresh virtualenv from")
    for candidate in usable:
        if _usable_by_container_uid(candidate):
            return candidate, True
    return usable[0], False


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    """The build stage and the pip install of the Dockerfile, done here; cached for the session."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PID namespaces are Linux only")
    root = Path(tempfile.mkdtemp(prefix="cmworker-image-"))
    root.chmod(0o755)  # the container user must reach the venv and the app
    try:
        src = root / "src"
        src.mkdir()
        for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):  # what the build stage copies
            shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "cmworker", src / "cmworker", ignore=shutil.ignore_patterns("__pycache__"))
        built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                      "--wheel-dir", str(root / "wheels"), str(src)])
        if built.returncode != 0:
            pytest.skip(f"cannot build the wheel (setuptools from PyPI unavailable?): {built.stderr[-500:]}")
        wheels = list((root / "wheels").glob("cmworker-*.whl"))
        assert len(wheels) == 1, built.stdout + built.stderr
        python, uid_ok = _base_python()
        venv = root / "venv"
        made = _run([python, "-m", "venv", str(venv)])
        assert made.returncode == 0, made.stderr
        # Its dependencies from the session's one download of them (tests/wheel_harness.py), offline.
        installed = _run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-index",
                          "--find-links", str(wheel_harness.wheelhouse()), str(wheels[0])])
        if installed.returncode != 0:
            pytest.skip(f"cannot install the wheel's dependencies (PyPI unreachable?): {installed.stderr[-500:]}")
        app = root / "app"
        app.mkdir()
        for name in ("app.py", "routing.py", "cmworker.toml"):  # what the runtime stage copies
            shutil.copy2(APP_DIR / name, app / name)
        (app / "container_checks.py").write_text(textwrap.dedent(CHECKS_APP))
        if uid_ok:
            run_as = ["setpriv", f"--reuid={CONTAINER_UID}", f"--regid={CONTAINER_UID}", "--clear-groups", "--"]
            note = f"uid {CONTAINER_UID}"
        else:
            run_as, note = [], f"root: no interpreter here that uid {CONTAINER_UID} can run"
        yield Image(root, venv, app, run_as, note)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_installs_the_cmworker_script_and_no_test_extras(image: Image) -> None:
    python = str(image.venv / "bin" / "python")
    where = _run([python, "-c", "import cmworker; print(cmworker.__file__)"], cwd="/")
    assert where.stdout.strip().startswith(str(image.venv)), where  # the wheel, not this source tree
    version = _run([str(image.venv / "bin" / "cmworker"), "--version"], cwd="/")
    assert version.returncode == 0 and version.stdout.startswith("cmworker "), version
    for extra in ("pytest", "hypothesis", "mypy", "pebble"):
        found = _run([python, "-c", f"import importlib.util as u; print(u.find_spec({extra!r}) is not None)"])
        assert found.stdout.strip() == "False", f"{extra} is installed: the image must carry no test extras"


def pid_namespaces_permitted() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    done = _run(["unshare", "--pid", "--fork", "--mount-proc", "true"])
    if done.returncode != 0:
        return f"unshare --pid is not permitted here: {done.stderr.strip()}"
    return None


def ns_pid(proc: psutil.Process) -> int | None:
    """A host process's pid inside its own (innermost) PID namespace."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        return None
    return None


class Container:
    """``cmworker run`` as PID 1 of a new PID namespace, as the image's entrypoint would run."""

    def __init__(self, image: Image, runtime: EmbeddedRuntime, log: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ("container_checks.py",)) -> None:
        # The environment of a Foundry container: the runtime's variables and little else.
        environ = {"PATH": f"{image.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                   "HOME": "/nonexistent", **runtime.env(0), **(env or {})}
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--kill-child", "--mount-proc", *image.run_as, "cmworker", "run", *args],
            cwd=image.app, env=environ, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.init = self._wait_for_init()

    def _wait_for_init(self) -> psutil.Process:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            children = psutil.Process(self.proc.pid).children()
            if children and "cmworker" in " ".join(children[0].cmdline()):
                return children[0]
            assert self.proc.poll() is None, self.output()
            time.sleep(0.02)
        raise AssertionError(f"the entrypoint did not start:\n{self.output()}")

    def processes(self) -> list[psutil.Process]:
        """Every process of the namespace: PID 1 and its descendants."""
        try:
            return [self.init, *self.init.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def zombies(self) -> list[int]:
        found = []
        for proc in self.processes():
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
        return found

    def by_ns_pid(self, pid_inside: int) -> psutil.Process | None:
        return next((p for p in self.processes() if ns_pid(p) == pid_inside), None)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.init.send_signal(signal.SIGKILL)  # PID 1 gone: the kernel kills the whole namespace
            self.proc.wait(WAIT)
        self._log_file.close()


@pytest.fixture
def scratch(image: Image) -> Iterator[Path]:
    """A directory the container user can reach (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(dir=image.root, prefix="test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def container_factory(image: Image, scratch: Path,
                      tmp_path: Path) -> Iterator[Callable[..., tuple[Container, EmbeddedRuntime]]]:
    reason = pid_namespaces_permitted()
    if reason:
        pytest.skip(reason)
    started: list[tuple[Container | None, EmbeddedRuntime]] = []

    def start(**kwargs: Any) -> tuple[Container, EmbeddedRuntime]:
        state = scratch / f"runtime-{len(started)}"
        state.mkdir(mode=0o755)
        # MAX_CONCURRENT_TASKS = 2: cmworker's default worker count, as in Foundry.
        runtime = EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2, state_dir=state).start()
        started.append((None, runtime))  # stopped below even if the container fails to start
        # In Foundry the token file is readable by the container's user; the emulator writes it 0600.
        token = Path(runtime.token_path(0))
        os.chown(token, CONTAINER_UID, CONTAINER_UID)
        token.parent.chmod(0o755)
        container = Container(image, runtime, tmp_path / f"container-{len(started)}.log", **kwargs)
        started[-1] = (container, runtime)
        return container, runtime

    yield start
    for container, runtime in started:
        if container is not None:
            container.stop()
        runtime.stop()


def answer(runtime: EmbeddedRuntime, job_id: str, container: Container) -> tuple[str, Any]:
    """(kind, payload) of a job's one answer; asserts the runtime accepted exactly one."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if container.proc.poll() is not None and runtime.record.job(job_id).answer is None:
            raise AssertionError(f"the container exited ({container.proc.returncode}):\n{container.output()}")
        snap = runtime.record.job(job_id)
        if snap is not None and snap.answer is not None:
            assert runtime.record.accepted(job_id) == 1, runtime.record.result_posts(job_id)
            payload = json.loads(snap.answer)
            return (payload.get("kind", "ok") if isinstance(payload, dict) else "ok"), payload
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} was not answered within {WAIT}s\n{container.output()[-3000:]}")


def wait_for(condition: Callable[[], Any], what: str, container: Container) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}\n{container.output()[-3000:]}")


def test_the_entrypoint_serves_the_example_app_as_pid_1(container_factory: Callable[..., Any],
                                                        image: Image) -> None:
    container, runtime = container_factory()
    stops = [{"name": "depot", "x_km": 0, "y_km": 0}, {"name": "b", "x_km": 3, "y_km": 0},
             {"name": "c", "x_km": 3, "y_km": 4}]
    assert answer(runtime, runtime.submit("route_length", {"stops": stops, "order": ["depot", "b", "c"]}), container) \
        == ("ok", 12.0)
    kind, plan = answer(runtime, runtime.submit("plan_route", {"stops": stops}), container)
    assert kind == "ok" and plan["order"][0] == "depot" and plan["length_km"] == 12.0
    assert ns_pid(container.init) == 1
    if image.run_as:
        assert {p.uids().real for p in container.processes()} == {CONTAINER_UID}, image.note
    # Worker count = $MAX_CONCURRENT_TASKS: PID 1, the template, two workers.
    assert wait_for(lambda: len(container.processes()) == 4, "two workers", container)
    assert {s["functionName"] for s in runtime.record.schemas(0)} >= {"plan_route", "improve_route", "coverage"}


def test_a_detached_grandchild_dies_with_its_job_and_leaves_no_zombie(container_factory: Callable[..., Any]) -> None:
    """A grandchild a job left running in its own session is killed and reaped once the job is answered."""
    container, runtime = container_factory()
    kind, spawned = answer(runtime, runtime.submit("spawn_orphan", {"linger": 60.0}), container)
    assert kind == "ok", spawned
    wait_for(lambda: container.by_ns_pid(spawned["grandchild"]) is None, "the grandchild to be killed", container)
    wait_for(lambda: not container.zombies(), "no zombie in the namespace", container)
    assert answer(runtime, runtime.submit("route_length", {"stops": [], "order": []}), container) == ("ok", 0.0)


def test_workers_orphaned_to_pid_1_are_reaped(container_factory: Callable[..., Any]) -> None:
    """When the worker template dies, its workers are re-parented to PID 1: cmworker reaps them itself."""
    container, runtime = container_factory()
    before = {p.pid for p in container.processes()[1:]}
    kind, payload = answer(runtime, runtime.submit("kill_template", {}), container)
    assert (kind, payload) == ("ok", "survived")  # its orphaned worker finished the job
    # The real status, not one the PID-1 reaper made up by reaping the template before the pool could.
    assert "worker template process died (exit status -9)" in container.output()
    wait_for(lambda: not ({p.pid for p in container.processes()} & before), "the old pool to be gone", container)
    wait_for(lambda: not container.zombies(), "no zombie in the namespace", container)
    assert answer(runtime, runtime.submit("route_length", {"stops": [], "order": []}), container) == ("ok", 0.0)


def test_sigterm_to_pid_1_drains_the_running_job_and_exits_0(container_factory: Callable[..., Any],
                                                             scratch: Path) -> None:
    container, runtime = container_factory()
    markers = scratch / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    marker = markers / "started"
    running = runtime.submit("hold", {"seconds": 1.0, "marker": str(marker)})
    wait_for(marker.exists, "the job to start", container)
    container.init.send_signal(signal.SIGTERM)
    # Sent once the signal has been handled (a job taken in the instant before that runs normally): a
    # draining replica starts no more work. It stays queued, or, if a GET was already parked in its
    # long poll when the signal came, it is answered `shutdown` at once.
    wait_for(lambda: "stopping: finishing running jobs" in container.output(), "SIGTERM to be handled", container)
    late = runtime.submit("route_length", {"stops": [], "order": []})
    assert answer(runtime, running, container) == ("ok", {"held": 1.0})
    assert container.proc.wait(WAIT) == 0, container.output()[-3000:]
    late_job = runtime.record.job(late)
    assert late_job.status == "queued" or json.loads(late_job.answer)["kind"] == "shutdown", late_job
    lines = [json.loads(line) for line in container.output().splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("stopping: finishing running jobs") for line in lines)
    assert all(line["params"].get("process_id") in (None, 1) for line in lines if line["origin"] == "cmworker.poller")
