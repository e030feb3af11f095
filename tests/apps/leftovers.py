"""Jobs that leave things behind: processes that escape their job, zombies, and state in their worker.

It imports the misbehave catalogue too, so that tests/test_serve.py's configuration (which names those
functions) fits this app.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import misbehave  # noqa: F401 - registers the catalogue beside these functions

import cmworker


def _orphan(event: dict, new_session: bool, ignore_term: bool, hold: int) -> int:
    """Fork a grandchild whose parent exits at once (a double fork); return its pid once it is set up.

    The grandchild moves to the directory ``event["mark"]`` (by which a test finds whatever survives),
    optionally leaves the job's session and process group (``setsid``) and ignores SIGTERM, waits until
    it has been re-parented, and only then sends its pid back through a pipe, so a test knows the state
    it checks is the one it meant. Then it allocates ``hold`` bytes and sleeps for good.
    """
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        child_pid = os.getpid()
        os.close(r)
        if os.fork() == 0:
            os.chdir(event["mark"])
            if new_session:
                os.setsid()
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            deadline = time.monotonic() + 10
            while os.getppid() == child_pid and time.monotonic() < deadline:
                time.sleep(0.001)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            held = b"\x01" * hold  # noqa: F841 - resident for as long as the process lives
            while True:
                time.sleep(3600)
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as f:
        return int(f.read())


def _write_pids(path: str, **pids: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(repr(pids))
    os.rename(tmp, path)  # whole or absent: a test never reads half of it


@cmworker.function
def daemon(context, event):
    """Leaves a double-forked grandchild behind (``setsid`` when asked), then returns or hangs."""
    grandchild = _orphan(event, event.get("setsid", False), event.get("ignore_term", False), 0)
    _write_pids(event["pidfile"], worker=os.getpid(), grandchild=grandchild)
    if event.get("then") == "hang":
        while True:
            time.sleep(3600)
    return grandchild


@cmworker.function
def orphan_allocates(context, event):
    """A re-parented grandchild (in its own session) holds ``bytes`` while the job waits, then returns."""
    grandchild = _orphan(event, True, False, event["bytes"])
    _write_pids(event["pidfile"], worker=os.getpid(), grandchild=grandchild)
    time.sleep(event["sleep"])
    return "waited"


@cmworker.function
def fork_away(context, event):
    """Starts a process that keeps forking and exiting, so its pid changes all the time, then returns."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.chdir(event["mark"])
        os.write(w, b"x")
        os.close(w)
        while True:
            if os.fork():
                os._exit(0)
    os.close(w)
    os.read(r, 1)
    time.sleep(event.get("sleep", 0.2))
    return "forked away"


@cmworker.function
def many_children(context, event):
    """Forks ``n`` children that live ``life`` seconds, never waited for; with ``orphans``, each child
    forks such a grandchild and exits at once, and is waited for, so the grandchildren are orphans.
    The job returns at once, while some of them still live."""
    children = []
    for _ in range(event["n"]):
        pid = os.fork()
        if pid == 0:
            if not event.get("orphans") or os.fork() == 0:
                time.sleep(event["life"])
            os._exit(0)
        children.append(pid)
    if event.get("orphans"):
        for pid in children:
            os.waitpid(pid, 0)
    return len(children)


@cmworker.function
def state(context, event):
    """What a job finds in its worker."""
    mask = os.umask(0)
    os.umask(mask)
    return {"pid": os.getpid(), "cwd": os.getcwd(), "env": os.environ.get(event.get("env", "CMW_LEAK")),
            "umask": mask, "sigalrm": str(signal.getsignal(signal.SIGALRM)),
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "threads": len(sys._current_frames()), "stdout": getattr(sys.stdout, "name", None),
            "fd1": os.fstat(1).st_ino}


@cmworker.function
def leave(context, event):
    """Changes one piece of its worker's state and returns without putting it back."""
    what = event["what"]
    if what == "cwd":
        os.chdir(event["path"])
    elif what == "env":
        os.environ["CMW_LEAK"] = "leaked"
    elif what == "umask":
        os.umask(0o077)
    elif what == "ignore_sigalrm":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    elif what == "block_sigalrm":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    elif what == "own_sigalrm_handler":
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
    elif what == "ignore_sigchld":
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel, unseen
    elif what == "profiler":  # a sampling profiler left running: a SIGPROF handler and its timer
        signal.signal(signal.SIGPROF, lambda signum, frame: None)
        signal.setitimer(signal.ITIMER_PROF, 0.01, 0.01)
    elif what == "alarm":
        signal.alarm(1)
    elif what == "stdout":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - left open on purpose
    elif what == "fd1":
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    elif what == "thread":
        delay = event.get("delay", 0.5)

        def kill_later():
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()
    elif what == "rmdir_cwd":
        os.rmdir(os.getcwd())
    elif what == "uid":
        os.setgid(65534)
        os.setuid(65534)
    else:
        raise ValueError(what)
    return what


@cmworker.function
def child_exit_code(context, event):
    """The exit status ``subprocess`` reports for a child that exits with 3."""
    return subprocess.run([sys.executable, "-c", "raise SystemExit(3)"]).returncode


@cmworker.function
def spin_for(context, event):
    """Keeps the CPU busy for ``event`` seconds of CPU time."""
    end = time.process_time() + event
    while time.process_time() < end:
        pass
    return event


@cmworker.function
def sleep_for(context, event):
    time.sleep(event)
    return event
