"""An app using application permissions: a refreshing service-user token, checked against Foundry."""

import hashlib
import os

import requests

import cmworker
from cmworker.auth import RefreshingToken, oauth_token

TOKEN = RefreshingToken(os.environ.get("FOUNDRY_HOST", "unset.invalid"), ["api:datasets-read"])
_seen: list[str] = []


def _whoami(token: str) -> int:
    reply = requests.get(f"https://{os.environ['FOUNDRY_HOST']}/multipass/api/me",
                         headers={"Authorization": f"Bearer {token}"}, verify=os.environ["DEFAULT_CA_PATH"],
                         timeout=10)
    return reply.status_code


@cmworker.function
def use_token(context, event):
    token = TOKEN.get()
    _seen.append(token)
    return {"token": hashlib.sha256(token.encode()).hexdigest()[:12], "fetches": TOKEN.fetches,
            "status": _whoami(token), "first_token_status": _whoami(_seen[0])}


@cmworker.function
def one_token(context, event):
    return len(oauth_token(os.environ.get("FOUNDRY_HOST", "unset.invalid"), ["api:datasets-read"]))
