"""``cmworker init [DIR]``: scaffold a compute module — an app, its configuration, its tests, its image.

The files come from ``cmworker/templates/project`` (package data, so they ship in the wheel); ``{{name}}``
and ``{{version}}`` in them become the project's name and this cmworker's version. Nothing is written
when any file is already there, unless ``--force``.
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from importlib import resources
from pathlib import Path

from cmworker._version import __version__

# template (below cmworker/templates/project) -> path in the new project, in the order they are listed
FILES = {
    "app.py.tmpl": "app.py",
    "cmworker.toml.tmpl": "cmworker.toml",
    "requirements.txt.tmpl": "requirements.txt",
    "Dockerfile.tmpl": "Dockerfile",
    "dockerignore.tmpl": ".dockerignore",
    "tests/test_app.py.tmpl": "tests/test_app.py",
    "README.md.tmpl": "README.md",
    "wheels/README.md.tmpl": "wheels/README.md",
}

NEXT_STEPS = """\
Next, in {where}:
  cmworker dev                               serve app.py on a local runtime (Ctrl-C stops it)
  cmworker call greet '{{"name": "Ada"}}'      from another terminal
  pytest                                     tests/ serve app.py with real workers
  docker build --platform linux/amd64 -t <registry>/{name}:0.1.0 .   after putting cmworker's wheel in wheels/
"""


def configure_init(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default=".", metavar="DIR",
                        help="where to create the project (default: the working directory; created if missing)")
    parser.add_argument("--name", help="the project's name, used in the README and the image tag "
                        "(default: DIR's name)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")


def run_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    name = project_name(args.name or target.resolve().name)
    existing = [path for path in FILES.values() if (target / path).exists()]
    if existing and not args.force:
        print(f"cmworker init: not overwriting {', '.join(existing)} in {target} (--force overwrites them)",
              file=sys.stderr)
        return 1
    written = write_project(target, name)
    for path in written:
        print(f"  {path}")
    print(NEXT_STEPS.format(where=target, name=name))
    return 0


def write_project(target: Path, name: str) -> list[str]:
    """Write every template into ``target``, overwriting; return the paths written, relative to it."""
    for template, path in FILES.items():
        text = _template_text(template)
        text = text.replace("{{name}}", name).replace("{{version}}", __version__)
        destination = target / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text, encoding="utf-8")
    return list(FILES.values())


def project_name(directory_name: str) -> str:
    """A name any image repository accepts (lower-case letters and digits joined by single ``-``), from a
    directory's: accents dropped, every other run of characters one ``-``."""
    ascii_name = unicodedata.normalize("NFKD", directory_name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "compute-module"


def _template_text(relative: str) -> str:
    resource = resources.files("cmworker")
    for part in ("templates", "project", *relative.split("/")):
        resource = resource.joinpath(part)
    return resource.read_text(encoding="utf-8")
