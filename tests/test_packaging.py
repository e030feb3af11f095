"""The package a user installs, and the images that install it.

* ``python -m build`` makes an sdist and a wheel that ``twine check`` accepts; the wheel carries
  ``py.typed``, the LICENSE, the ``cmworker init`` templates and the console script; the version is
  declared once.
* Both Dockerfiles (this repository's and the one ``cmworker init`` writes) follow Foundry's rules,
  install cmworker the same way, and their install steps work: replayed into a fresh virtualenv with
  the wheel built here, then ``cmworker run --help`` and the app's schemas from it. No container engine
  runs here, so no image is built (docs/deploying.md says so).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from cmworker._version import __version__
from cmworker.cli import main as cli_main
from cmworker.commands.init import FILES
from tests import wheel_harness
from tests.test_container import (
    check_app,
    check_copies,
    check_entrypoint,
    check_pinned_base,
    check_platform,
    check_user,
    parse_dockerfile,
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def test_the_version_is_declared_once_and_the_changelog_names_it() -> None:
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert "version = attr: cmworker._version.__version__" in setup_cfg
    assert not re.search(r"^version\s*=\s*\d", setup_cfg, re.M)
    assert not re.search(r"^\s*version\s*=", (ROOT / "pyproject.toml").read_text(), re.M)
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0] == __version__


def test_the_license_file_is_the_apache_2_license_the_metadata_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "license = Apache-2.0" in (ROOT / "setup.cfg").read_text()


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts() -> None:
    dist = wheel_harness.dist()
    assert wheel_harness.wheel().name == f"cmworker-{__version__}-py3-none-any.whl"
    assert wheel_harness.sdist().name == f"cmworker-{__version__}.tar.gz"
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                             capture_output=True, text=True, timeout=120)
    if checked.returncode != 0 and "No module named twine" in checked.stderr:
        pytest.skip("twine is not installed (it is in the test extra)")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_wheel_carries_the_types_marker_the_license_the_templates_and_the_script() -> None:
    with zipfile.ZipFile(wheel_harness.wheel()) as whl:
        names = set(whl.namelist())
        info = f"cmworker-{__version__}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert "cmworker/py.typed" in names
    assert any(n.startswith(info) and n.endswith("LICENSE") for n in names), sorted(names)
    for template in FILES:
        assert f"cmworker/templates/project/{template}" in names, template
    assert not any(n.startswith(("tests/", "examples/", "scripts/")) for n in names)
    assert "cmworker = cmworker.cli:main" in entry_points
    assert "License: Apache-2.0" in metadata and "Requires-Python: >=3.10" in metadata
    assert "Provides-Extra: test" in metadata  # extras are declared, and installed only when asked for


def test_the_sdist_carries_the_license_and_the_templates() -> None:
    with tarfile.open(wheel_harness.sdist()) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    assert {"LICENSE", "README.md", "setup.cfg", "pyproject.toml", "cmworker/py.typed"} <= names
    assert {f"cmworker/templates/project/{template}" for template in FILES} <= names


# -- the two Dockerfiles --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project written by `cmworker init`, its wheels/ holding the wheel as its README says to."""
    project = tmp_path_factory.mktemp("generated") / "my-module"
    assert cli_main(["init", str(project)]) == 0
    return project


def _dockerfiles(generated: Path) -> dict[str, Path]:
    return {"repository": ROOT, "generated": generated}


@pytest.mark.parametrize("which", ["repository", "generated"])
def test_the_dockerfile_follows_foundrys_rules(which: str, generated: Path) -> None:
    context = _dockerfiles(generated)[which]
    stages = parse_dockerfile((context / "Dockerfile").read_text())
    problems = [*check_platform(stages), *check_pinned_base(stages), *check_user(stages), *check_entrypoint(stages),
                *check_copies(stages, context), *check_app(stages, context)]
    assert problems == []
    instructions = [ln for ln in (context / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in instructions if "latest" in ln]


def test_both_dockerfiles_install_cmworker_and_the_requirements_the_same_way(generated: Path) -> None:
    def final_stage(context: Path) -> tuple[str, list[str]]:
        stages = parse_dockerfile((context / "Dockerfile").read_text())
        runs = [i.args for i in stages[-1].all("RUN")]
        return stages[-1].base, runs

    repo_base, repo_runs = final_stage(ROOT)
    generated_base, generated_runs = final_stage(generated)
    assert repo_base == generated_base  # one pinned base image
    assert repo_runs == generated_runs
    assert any("pip install /tmp/wheels/cmworker-*.whl -r /tmp/requirements.txt" in run for run in repo_runs)


def test_a_broken_generated_dockerfile_is_caught(generated: Path) -> None:
    """The rules above can fail on the generated file: each broken variant is reported."""
    text = (generated / "Dockerfile").read_text()
    for old, new, check in [("USER 5000:5000", "USER root", check_user),
                            ("FROM --platform=linux/amd64 ${PYTHON_IMAGE}", "FROM ${PYTHON_IMAGE}", check_platform),
                            ("python:3.12.13-slim-trixie@", "python:latest@", check_pinned_base)]:
        assert old in text
        assert check(parse_dockerfile(text.replace(old, new)))
    assert check_app(parse_dockerfile(text.replace("COPY app.py cmworker.toml ./", "COPY cmworker.toml ./")),
                     generated)


@pytest.mark.parametrize("which", ["repository", "generated"])
def test_the_dockerfiles_install_steps_work_in_a_fresh_virtualenv(which: str, generated: Path,
                                                                   tmp_path: Path) -> None:
    """The final stage's COPY and `pip install` lines, run for real: the wheel built here and the app's
    requirements into a new virtualenv; then the entrypoint's `cmworker run --help` and the app's schemas."""
    context = _dockerfiles(generated)[which]
    build_output = tmp_path / "build-stage"
    (build_output / "wheels").mkdir(parents=True)
    shutil.copy2(wheel_harness.wheel(), build_output / "wheels")
    if which == "generated":
        shutil.copy2(wheel_harness.wheel(), context / "wheels")
    stages = parse_dockerfile((context / "Dockerfile").read_text())
    image = wheel_harness.replay_final_stage([(i.keyword, i.args) for i in stages[-1].instructions], context,
                                             build_output, tmp_path)
    located = subprocess.run([str(image.venv / "bin" / "python"), "-c", "import cmworker; print(cmworker.__file__)"],
                             capture_output=True, text=True, timeout=60, cwd="/")
    assert located.stdout.startswith(str(image.venv)), located  # the wheel, not this source tree
    helped = image.cmworker("run", "--help")
    assert helped.returncode == 0 and "usage: cmworker run" in helped.stdout, helped
    schema = image.cmworker("schema")  # the app named by the image's /app/cmworker.toml
    assert schema.returncode == 0, schema.stderr
    names = {s["functionName"] for s in json.loads(schema.stdout)}
    expected = {"greet", "count", "digest"} if which == "generated" else {"plan_route", "route_length"}
    assert expected <= names, names
