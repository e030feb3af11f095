"""An app that imports once: every later import (a replacement template's) crashes the interpreter.

The marker file named by $CMWORKER_TEST_IMPORTED records the first import.
"""

import os
import time

import cmworker

_MARKER = os.environ["CMWORKER_TEST_IMPORTED"]
if os.path.exists(_MARKER):
    os._exit(1)
open(_MARKER, "w").close()


@cmworker.function
def nap(context, event):
    time.sleep(event["sleep"])
    return {"napped": event["sleep"]}
