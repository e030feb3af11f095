"""``cmworker init``: a new project whose own tests pass and whose app serves, and files never overwritten
by surprise.

The project's pytest runs in a subprocess, as a user would run it in the new directory: its fixture
(``cmworker.testing``) serves the app with real workers on the embedded runtime. Then ``cmworker run``
serves the same app, configured by the generated cmworker.toml, against an embedded runtime over HTTPS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmworker.cli import main as cli_main
from cmworker.commands.init import FILES, project_name
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import WAIT, stop_process

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def _env() -> dict[str, str]:
    """This environment, with cmworker importable from this tree as an installed one would be, and
    without the variables of the pytest running this test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CMWORKER_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_init_makes_a_project_whose_tests_pass_and_whose_app_serves(tmp_path: Path) -> None:
    project = tmp_path / "My Module"
    made = subprocess.run([sys.executable, "-m", "cmworker", "init", str(project)], capture_output=True,
                          text=True, timeout=WAIT, env=_env())
    assert made.returncode == 0, made.stderr
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == sorted(FILES.values())
    assert "<registry>/my-module:0.1.0" in (project / "README.md").read_text()
    assert 'if __name__ == "__main__":' in (project / "app.py").read_text()

    # The project's own tests, as its README says to run them.
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                            capture_output=True, text=True, timeout=120, env=_env())
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "4 passed" in tested.stdout, tested.stdout[-2000:]

    # `cmworker run` in the project directory: its cmworker.toml names the app.
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as runtime, \
            open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cmworker", "run", "--workers", "2"], cwd=project,
                                env={**_env(), **runtime.env(0)}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            with runtime.client() as client:
                assert client.call("greet", {"name": "Ada"}, timeout=WAIT) == "Hello, Ada."
                assert client.call("count", {"n": 2}, timeout=WAIT) == [{"i": 0}, {"i": 1}]
                assert {f["functionName"] for f in client.functions()} == {"greet", "count", "digest"}
        finally:
            stop_process(proc)
        assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]


def test_init_refuses_to_overwrite_and_names_every_file_in_the_way(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "app.py").write_text("# mine\n")
    (tmp_path / "Dockerfile").write_text("# mine too\n")
    assert cli_main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not overwriting app.py, Dockerfile in" in err and "--force" in err
    assert (tmp_path / "app.py").read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dockerfile", "app.py"]  # nothing else written

    assert cli_main(["init", str(tmp_path), "--force"]) == 0
    assert "cmworker.main()" in (tmp_path / "app.py").read_text()
    assert all((tmp_path / path).is_file() for path in FILES.values())


def test_init_into_the_working_directory_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["init", "--name", "planner"]) == 0
    assert (tmp_path / "cmworker.toml").read_text().startswith("# cmworker's configuration of planner")


@pytest.mark.parametrize(("directory", "name"), [("My Module", "my-module"), ("routes_v2", "routes-v2"),
                                                 ("--", "compute-module"), ("Été.Plan", "ete-plan")])
def test_the_project_name_is_one_an_image_repository_accepts(directory: str, name: str) -> None:
    assert project_name(directory) == name
