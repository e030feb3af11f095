"""Tokens for calling Foundry from a function: application permissions and pipeline mode.

* **Application permissions** (functions mode): Foundry gives the module ``CLIENT_ID`` and
  ``CLIENT_SECRET``, the credentials of its service user. ``oauth_token(host, scopes)`` exchanges them
  at ``https://HOST/multipass/api/oauth2/token`` (the OAuth 2 client-credentials grant), verifying the
  server with the CA bundle in ``DEFAULT_CA_PATH``. A token expires (the reply's ``expires_in``):
  ``RefreshingToken`` keeps one fresh for a long-lived process. Given no host, they use
  ``FOUNDRY_HOST`` (``foundry_host()``): cmworker's variable, set in the module's configuration, and
  by ``cmworker dev`` to the embedded runtime's token endpoint.
* **Pipeline mode**: ``pipeline_token()`` reads the job token from the file named by ``BUILD2_TOKEN``
  (it lives in ``cmworker.resources``, which loads no HTTP library, and is re-exported here).

Every token obtained here is registered as a log secret, so it never reaches a log line. A missing
variable or file raises ``NotProvided`` naming it; a refused exchange raises ``AuthFailed``.

This module loads ``requests`` when imported; ``import cmworker`` does not import it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cmworker import logs
from cmworker.errors import AuthFailed, NotProvided
from cmworker.resources import pipeline_token

__all__ = ["AccessToken", "RefreshingToken", "fetch_token", "foundry_host", "oauth_token", "pipeline_token"]

TOKEN_PATH = "/multipass/api/oauth2/token"
CLIENT_ID = "CLIENT_ID"
CLIENT_SECRET = "CLIENT_SECRET"
DEFAULT_CA_PATH = "DEFAULT_CA_PATH"
FOUNDRY_HOST = "FOUNDRY_HOST"
# When the endpoint does not say how long its token lives, assume this (the SDK refreshes every 30 min).
_DEFAULT_LIFETIME = 1800.0
_APPLICATION = "application permissions (a functions module with the application's permissions)"
_log = logs.get_logger("cmworker.auth")


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and how long it lives, in seconds from when it was asked for."""

    value: str
    expires_in: float

    def __repr__(self) -> str:  # never the token itself
        return f"AccessToken(expires_in={self.expires_in})"


def _required_env(name: str, mode: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise NotProvided(f"{name} is not set: it is provided to a compute module running with {mode}")
    return value


def _ca_bundle() -> str | bool:
    """``DEFAULT_CA_PATH`` when set (it must exist), else the system's trust store."""
    path = os.environ.get(DEFAULT_CA_PATH)
    if not path:
        return True
    if not os.path.isfile(path):
        raise NotProvided(f"{DEFAULT_CA_PATH} names {path}, which is not a file")
    return path


def foundry_host() -> str:
    """The Foundry host to ask for tokens: ``FOUNDRY_HOST`` (``NotProvided`` naming it when unset).

    Foundry does not set it: set it in the module's environment variables to your enrollment's host.
    ``cmworker dev`` sets it to the embedded runtime's token endpoint (``127.0.0.1:PORT``)."""
    host = os.environ.get(FOUNDRY_HOST, "").strip()
    if not host:
        raise NotProvided(f"{FOUNDRY_HOST} is not set: pass the Foundry host to ask for tokens, or set "
                          f"{FOUNDRY_HOST} to it (yourenrollment.palantirfoundry.com)")
    return host


def _token_url(host: str | None) -> str:
    host = (host or foundry_host()).rstrip("/")
    if host.startswith(("https://", "http://")):
        return host + TOKEN_PATH
    return f"https://{host}{TOKEN_PATH}"


def fetch_token(host: str | None, scopes: Iterable[str], *, timeout: float = 30.0) -> AccessToken:
    """Exchange ``CLIENT_ID``/``CLIENT_SECRET`` for a token with ``scopes`` at Foundry ``host``
    (``example.palantirfoundry.com``, ``host:port`` or an ``https://`` URL; ``None``: ``foundry_host()``)."""
    import requests

    client_id = _required_env(CLIENT_ID, _APPLICATION)
    client_secret = _required_env(CLIENT_SECRET, _APPLICATION)
    logs.add_secret(client_secret)
    url = _token_url(host)
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret,
            "scope": " ".join(scopes)}
    try:
        reply = requests.post(url, data=form, verify=_ca_bundle(), timeout=timeout,
                              headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise AuthFailed(f"the token endpoint {url} could not be reached: {type(exc).__name__}: {exc}") from None
    if reply.status_code != 200:
        raise AuthFailed(f"the token endpoint {url} refused the exchange for client {client_id!r}: "
                         f"HTTP {reply.status_code} {logs.excerpt(reply.text, 300)}", reply.status_code)
    try:
        body: Any = reply.json()
        value = body["access_token"]
        expires_in = float(body.get("expires_in", _DEFAULT_LIFETIME))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AuthFailed(f"the token endpoint {url} answered 200 without an access_token",
                         reply.status_code) from None
    if not isinstance(value, str) or not value:
        raise AuthFailed(f"the token endpoint {url} answered an empty access_token", reply.status_code)
    logs.add_secret(value)
    return AccessToken(value, expires_in)


def oauth_token(host: str | None, scopes: Iterable[str], *, timeout: float = 30.0) -> str:
    """A bearer token for the module's service user (application permissions), with ``scopes``
    (``host`` ``None``: ``foundry_host()``)."""
    return fetch_token(host, scopes, timeout=timeout).value


class RefreshingToken:
    """A token for ``host`` and ``scopes`` that is renewed before it expires; safe to share between threads.

    ``get()`` returns the current token, and fetches a new one once less than ``min(margin, a fifth of
    its lifetime)`` of it remains (its lifetime is the endpoint's ``expires_in``). One caller fetches;
    callers arriving meanwhile get the current token while it is still valid, or wait for the new one.
    A failed renewal while the token is still valid is logged and retried a little later; once it has
    expired, the failure is raised. ``host`` ``None``: ``foundry_host()``, read at each fetch.
    """

    def __init__(self, host: str | None, scopes: Iterable[str], *, margin: float = 60.0, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[], AccessToken] | None = None) -> None:
        self.host = host
        self.scopes = tuple(scopes)
        self.margin = margin
        self._clock = clock
        self._fetch = fetch or (lambda: fetch_token(self.host, self.scopes, timeout=timeout))
        self._lock = threading.Lock()
        self._value: str | None = None
        self._renew_at = 0.0
        self._expires_at = 0.0
        self.fetches = 0  # how many times a token was asked for (successful or not)

    def get(self) -> str:
        value = self._value
        if value is not None and self._clock() < self._renew_at:
            return value
        still_valid = value is not None and self._clock() < self._expires_at
        if not self._lock.acquire(blocking=not still_valid):
            assert value is not None
            return value  # another thread is renewing it: the current one is still good meanwhile
        try:
            if self._value is not None and self._clock() < self._renew_at:
                return self._value  # renewed while this caller waited
            return self._renew()
        finally:
            self._lock.release()

    def _renew(self) -> str:
        asked = self._clock()
        self.fetches += 1
        try:
            token = self._fetch()
        except Exception as exc:
            if self._value is not None and asked < self._expires_at:
                retry = min(5.0, (self._expires_at - asked) / 2)
                self._renew_at = asked + retry
                _log.warning("token_renewal_failed", error=str(exc), retry_in_s=retry)
                return self._value
            raise
        lifetime = max(token.expires_in, 0.0)
        self._expires_at = asked + lifetime
        self._renew_at = asked + lifetime - min(self.margin, lifetime / 5)
        self._value = token.value
        return token.value

    def __str__(self) -> str:
        return self.get()

    def __repr__(self) -> str:
        return f"RefreshingToken(host={self.host!r}, scopes={self.scopes!r})"
