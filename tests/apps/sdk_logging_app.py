"""An app that logs through the official SDK's loggers (and, in one function, cmworker's too)."""

import logging

from compute_modules.logging import get_logger, setup_logger_formatter

import cmworker

made_at_import = get_logger("sdk_app.import")
setup_logger_formatter(logging.Formatter("%(levelname)s %(message)s"))  # accepted; lines stay SLS


@cmworker.function
def sdk_logs(context, event):
    made_at_import.info("from the import-time logger %s", event["n"])
    get_logger("sdk_app.in_job").warning("from a logger made in the job", params={"order": event["n"]})
    made_at_import.bind(params={"region": "eu"}).info("bound", unsafe_params={"customer": "ada"})
    return event["n"]


@cmworker.function
def both_loggers(context, event):
    cmworker.get_logger("sdk_app.ours").info("from cmworker's logger", n=event["n"])
    get_logger("sdk_app.theirs").info("from the SDK's logger")
    return event["n"]
