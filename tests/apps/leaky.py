"""Careless code that shows its secrets in every way a job can: the logs must never carry them.

``act`` runs a list of steps, each ``[how, what]`` or ``[how, what, nonce]`` (the nonce marks what the step
writes; by default the job's ``nonce``): ``what`` names a secret of the job ("auth", the
``authHeader``; "token", its credential after the scheme; "temp", the temporary credentials token;
"client", ``CLIENT_SECRET``; "source:NAME:KEY", one value of the sources' credentials) or "remembered",
the secret an earlier job of this worker kept in a module global. ``how`` says how it is shown.
"""

import json
import logging
import os
import sys
import threading
import time

import cmworker

_remembered = {"secret": ""}

# At import, in the template process: the replica-wide secrets, printed before any job runs.
if os.environ.get("LEAKY_AT_IMPORT"):
    print("import: client secret", os.environ.get("CLIENT_SECRET"), flush=True)
    with open(os.environ["SOURCE_CREDENTIALS"], encoding="utf-8") as _file:
        print("import: sources", _file.read().replace("\n", " "), flush=True)


def _secret(context, what):
    if what == "remembered":
        return _remembered["secret"]
    if what == "auth":
        return context["authHeader"]
    if what == "token":
        return context["authHeader"].split(None, 1)[1]
    if what == "temp":
        return context["tempCredsAuthToken"]
    if what == "client":
        return context["CLIENT_SECRET"]
    _, source, key = what.split(":")
    return str(context["sources"][source][key])


def _later(nonce, secret, delay):
    time.sleep(delay)
    sys.stdout.write(f"{nonce} later: {secret}\n")  # one write: two such threads do not mix their lines


def _split(nonce, secret):
    """A line longer than the parent's line limit (16 KiB), written so that the parent reads it in pieces:
    the secret's first half ends the read that passes the limit, its second half comes 0.3 s later."""
    half = len(secret) // 2
    sys.stdout.write(nonce + " " + "x" * 16_000)
    sys.stdout.flush()
    time.sleep(0.2)
    sys.stdout.write("y" * 600 + secret[:half])
    sys.stdout.flush()
    time.sleep(0.3)
    sys.stdout.write(secret[half:] + " end " + nonce + "\n")
    sys.stdout.flush()


def _log_traceback(nonce, secret):
    try:
        raise RuntimeError(f"the call with {secret} failed")
    except RuntimeError:
        logging.getLogger("app").exception("%s calling failed", nonce)


def _raise(nonce, secret):
    raise ValueError(f"refused: {secret}")


_SHOW = {
    "print": lambda n, s: print(n, "secret:", s),
    "stderr": lambda n, s: print(n, "secret:", s, file=sys.stderr),
    "json": lambda n, s: print(n, json.dumps({"secret": s})),
    "json_utf8": lambda n, s: print(n, json.dumps({"secret": s}, ensure_ascii=False)),
    "repr": lambda n, s: print(n, {"secret": s}),
    "bytes_repr": lambda n, s: print(n, s.encode()),
    "log": lambda n, s: logging.getLogger("app").warning("%s secret %s", n, s),
    # A log line longer than the parent's line limit: cut, it is logged as text, the secret JSON-escaped.
    "log_long": lambda n, s: logging.getLogger("app").warning("%s %s %s end-%s", n, "z" * 20_000, s, n),
    "unsafe": lambda n, s: cmworker.get_logger("app").info(f"{n} calling", secret=s, nested={"deep": [s]}),
    "traceback": _log_traceback,
    "remember": lambda n, s: _remembered.update(secret=s),
    "thread": lambda n, s: threading.Thread(target=_later, args=(n, s, 0.3)).start(),
    "split": _split,
    "raise": _raise,
}


@cmworker.function
def act(context, event):
    for how, what, *nonce in event["steps"]:  # a step may carry its own nonce
        _SHOW[how](nonce[0] if nonce else event.get("nonce", ""), _secret(context, what))
    return "done"


@cmworker.function
def credentials(context, event):
    return {"authHeader": context["authHeader"], "tempCredsAuthToken": context["tempCredsAuthToken"]}
