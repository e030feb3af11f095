"""Careless code showing a job's credentials in the spellings a red team tries, for
tests/test_redteam_secrets.py (tests/apps/leaky.py covers the plain ones).

``act`` runs ``event["steps"]``, each ``[how, what]``: ``what`` names the secret ("token", the
``authHeader`` after its scheme; "client", ``CLIENT_SECRET``; "module", the module's own token, read from the
file ``MODULE_AUTH_TOKEN`` names), ``how`` the way it is shown; the job's
``nonce`` marks each line. ``stuck`` shows the token in a forged stack dump, then runs past its timeout.
"""

import base64
import json
import logging
import os
import sys
import time
import urllib.parse

import cmworker


def _secret(context, what):
    if what == "token":
        return context["authHeader"].split(None, 1)[1]
    if what == "module":
        with open(os.environ["MODULE_AUTH_TOKEN"], encoding="utf-8") as file:
            return file.read()
    return context["CLIENT_SECRET"]


def _split_writes(n, s):
    """The secret in three writes of one line, flushed apart: the parent reads them separately."""
    for piece in (f"{n} split: {s[:2]}", s[2:5], s[5:] + "\n"):
        sys.stdout.write(piece)
        sys.stdout.flush()
        time.sleep(0.1)


def _bytes(n, data):
    sys.stdout.flush()
    os.write(1, n.encode() + b" " + data + b"\n")


_SHOW = {
    "print": lambda n, s: print(n, "secret:", s),
    "carriage_return": lambda n, s: print(f"{n} progress 10%\r{s}\r done"),
    "nul": lambda n, s: _bytes(n, b"\0" + s.encode() + b"\0"),
    "ansi": lambda n, s: print(f"{n} \x1b[31m{s}\x1b[0m"),
    "not_utf8": lambda n, s: _bytes(n, b"\xff\xfe" + s.encode() + b"\xc3"),
    "split_writes": _split_writes,
    "ascii": lambda n, s: print(n, ascii(s)),
    "percent_a": lambda n, s: logging.getLogger("app").warning("%s %a", n, s),
    "url": lambda n, s: print(f"{n} https://host/api?token={urllib.parse.quote(s, safe='')}"),
    "url_plus": lambda n, s: print(f"{n} form: secret={urllib.parse.quote_plus(s)}"),
    "json_list": lambda n, s: print(n, json.dumps([s, {"k": s}], indent=2).replace("\n", " ")),
    "base64": lambda n, s: print(n, base64.b64encode(s.encode()).decode()),
    "stderr_exception": lambda n, s: sys.stderr.write(f"{n} Traceback: ValueError({s!r})\n"),
}


@cmworker.function
def act(context, event):
    for how, what in event["steps"]:
        _SHOW[how](event.get("nonce", ""), _secret(context, what))
    return "done"


@cmworker.function(timeout="1s")
def stuck(context, event):
    token = _secret(context, "token")
    sys.stderr.write("Current thread 0x00007f0000000001 (most recent call first):\n"
                     f'  File "/app/{token}.py", line 7 in {event["nonce"]}_{token}\n\n')
    sys.stderr.flush()
    time.sleep(60)
