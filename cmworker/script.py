"""``cmworker.main()``: ``python app.py`` as a container entrypoint, for apps that end the way the
official SDK's template does::

    if __name__ == "__main__":
        cmworker.main()          # in place of start_compute_module()

It behaves exactly like ``cmworker run app.py`` because it *becomes* that command: it replaces the
process (``os.execv``) with ``python -m cmworker run <this script> <the script's arguments>``. The PID
does not change, so as PID 1 of a container the new image is PID 1 and handles SIGTERM and orphans as
``cmworker run`` does. Nothing of the app survives the exec: its modules, threads, open sockets and
module-level state are gone, and the serving parent starts clean and never imports the app (the worker
template does, as always). The only cost is that the app's module body ran once before ``main()`` was
reached, which Python does for any script before it can call anything in it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the running script's functions: ``cmworker run <script> [argv]``; never returns.

    ``argv``: the ``cmworker run`` flags (default: the script's own, ``sys.argv[1:]``), so
    ``python app.py --workers 4`` works as ``cmworker run app.py --workers 4`` does.
    """
    script = _script_path()
    args = list(sys.argv[1:] if argv is None else argv)
    # Whatever the app printed while it was imported is in this process's buffers; exec would drop it.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    command = [sys.executable, "-m", "cmworker", "run", script, *args]
    os.execv(sys.executable, command)


def _script_path() -> str:
    """The ``.py`` file Python is running as ``__main__``; an error when ``main()`` is called any other way.

    The worker template and ``cmworker schema`` import the app under its own module name, so a guarded
    ``main()`` never runs there. An unguarded one would: it finds cmworker's own ``__main__`` and stops
    the import with this error instead of starting a replica inside a replica.
    """
    main_module = sys.modules.get("__main__")
    path = getattr(main_module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        raise RuntimeError("cmworker.main() serves the script Python is running (`python app.py`); "
                           "here there is none. Use `cmworker run APP` instead.")
    path = os.path.abspath(path)
    package = os.path.dirname(os.path.abspath(__file__))
    if os.path.commonpath([path, package]) == package or getattr(main_module, "__spec__", None) is not None:
        raise RuntimeError("cmworker.main() was called while cmworker itself was importing the app; call it "
                           "only under `if __name__ == \"__main__\":` at the end of the app")
    return path
