"""An app written for the official SDK, migrated: the import line changed, and `python app.py` ends in
cmworker.main() where it called start_compute_module(). Each import of it is recorded in $IMPORT_LOG."""

import os
import time
from dataclasses import dataclass

import cmworker
from cmworker import function

with open(os.environ["IMPORT_LOG"], "a") as log:
    log.write(f"{os.getpid()} {__name__}\n")


@dataclass
class Pair:
    a: int
    b: int


@function
def add(context, event: Pair):
    return {"sum": event.a + event.b}


@function
def slow(context, event):
    open(event["started"], "w").close()  # the test knows it runs, not only that the replica took it
    time.sleep(event["seconds"])
    return "finished"


if __name__ == "__main__":
    cmworker.main()
