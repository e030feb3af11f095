"""An app reading its sources through the official SDK's helpers (v1 and v2), served by cmworker."""

import hashlib

from compute_modules.sources import get_source_config, get_source_secret
from compute_modules.sources_v2 import get_source

import cmworker


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


@cmworker.function
def sources_v1(context, event):
    secret = get_source_secret("weather", "apiKey")
    print(f"the secret is {secret}")  # must be redacted in the replica's log
    return {"secret": _digest(secret), "config": get_source_config("weather"),
            "context_secret": _digest(context["sources"]["weather"]["apiKey"])}


@cmworker.function
def sources_v2(context, event):
    source = get_source("weather")
    connection = source.get_https_connection()
    reply = connection.get_client().get(connection.url + "/multipass/api/me",
                                        headers={"Authorization": f"Bearer {source.get_secret('apiKey')}"},
                                        timeout=10)
    return {"secret": _digest(source.get_secret("apiKey")), "url": connection.url, "status": reply.status_code,
            "subject": reply.json().get("subject")}
