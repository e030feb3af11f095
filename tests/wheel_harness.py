"""cmworker's distributions built once per test session (``python -m build``: an sdist, then the wheel
from that sdist), and what the images do with the wheel, replayed in a fresh virtualenv.

No container engine runs here, so the install steps of a Dockerfile are executed as they are written:
its final stage's ``COPY`` lines lay the files out under a directory standing for the image's ``/``,
and its ``pip install`` runs against a new virtualenv with its absolute paths moved under that
directory. The wheel's dependencies are resolved from the machine's configured index once per session
(as ``docker build`` would get them from PyPI) and installed from that download.
"""

from __future__ import annotations

import atexit
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_built: dict[str, Path] = {}


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]


def dist() -> Path:
    """A directory with ``cmworker-<version>.tar.gz`` and ``cmworker-<version>-py3-none-any.whl``."""
    if "dist" not in _built:
        out = Path(tempfile.mkdtemp(prefix="cmworker-dist-"))
        atexit.register(shutil.rmtree, out, True)
        built = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
        if built.returncode != 0 and "No module named build" in built.stderr:
            pytest.skip("the `build` package is not installed (it is in the test extra)")
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        _built["dist"] = out
    return _built["dist"]


def wheelhouse() -> Path:
    """The wheel and every wheel it depends on, resolved once by pip from the configured index, so that
    each replayed install below runs offline (``--no-index``) and takes a few seconds, not a resolution."""
    if "wheelhouse" not in _built:
        out = Path(tempfile.mkdtemp(prefix="cmworker-wheelhouse-"))
        atexit.register(shutil.rmtree, out, True)
        done = _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(out),
                     str(wheel())])
        if done.returncode != 0 and "No matching distribution" in done.stderr:
            pytest.skip(f"no package index reachable for the wheel's dependencies: {done.stderr[-400:]}")
        assert done.returncode == 0, done.stderr[-2000:]
        _built["wheelhouse"] = out
    return _built["wheelhouse"]


def wheel() -> Path:
    (found,) = dist().glob("cmworker-*.whl")
    return found


def sdist() -> Path:
    (found,) = dist().glob("cmworker-*.tar.gz")
    return found


@dataclass
class Image:
    """An image's final stage replayed: ``root`` stands for its ``/``, ``venv`` holds what pip installed."""

    root: Path
    venv: Path
    workdir: Path

    def cmworker(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``cmworker ARGS`` as the entrypoint would run it: the venv's script, in the WORKDIR."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.root)}
        return _run([str(self.venv / "bin" / "cmworker"), *args], cwd=self.workdir, env=env)


def replay_final_stage(instructions: list[tuple[str, str]], context: Path, build_output: Path,
                       scratch: Path) -> Image:
    """Lay out and install what a Dockerfile's final stage (``(keyword, args)`` pairs) makes, from the build
    ``context``; ``COPY --from=<stage>`` takes its files from ``build_output``."""
    root = scratch / "image"
    root.mkdir()
    workdir = "/"
    installs: list[str] = []
    for keyword, args in instructions:
        if keyword == "WORKDIR":
            workdir = os.path.join(workdir, args)
            (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            words = shlex.split(args)
            from_stage = any(w.startswith("--from") for w in words)
            *sources, dest = [w for w in words if not w.startswith("--")]
            base = build_output if from_stage else context
            _copy([base / s.lstrip("/") if from_stage else base / s for s in sources],
                  root / os.path.join(workdir, dest).lstrip("/"), dest.endswith("/") or len(sources) > 1)
        elif keyword == "RUN":
            installs += [part.strip() for part in args.split("&&") if part.strip().startswith("pip install")]
    assert installs, "the final stage installs nothing with pip"
    venv = scratch / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    for command in installs:
        args = [_inside(root, word) for word in shlex.split(command)[2:]]
        expanded = [match for word in args for match in (sorted(glob.glob(word)) or [word])]
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
               "--disable-pip-version-check", "-q"]
        done = _run([*pip, "--no-index", "--find-links", str(wheelhouse()), *expanded])
        if done.returncode != 0:  # a requirement of the app that the wheelhouse lacks: ask the index
            done = _run([*pip, "--find-links", str(wheelhouse()), *expanded])
        if done.returncode != 0 and "No matching distribution" in done.stderr:
            pytest.skip(f"no package index reachable for the wheel's dependencies: {done.stderr[-400:]}")
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return Image(root, venv, root / workdir.lstrip("/"))


def _copy(sources: list[Path], dest: Path, into_directory: bool) -> None:
    for source in sources:
        assert source.exists(), f"COPY {source}: no such file"
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            target = dest / source.name if into_directory else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _inside(root: Path, word: str) -> str:
    """An absolute path of the image, as a path below ``root``; anything else unchanged."""
    return str(root / word.lstrip("/")) if word.startswith("/") else word
