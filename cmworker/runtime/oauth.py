"""Foundry's token service as the embedded runtime plays it: application permissions and pipeline tokens.

``POST /multipass/api/oauth2/token`` takes the OAuth 2 client-credentials grant (a form body with
``grant_type=client_credentials``, ``client_id``, ``client_secret``, ``scope``) and answers
``{"access_token", "token_type": "bearer", "expires_in", "scope"}`` for the one client the runtime
issued (``Issuer.client_id``/``client_secret``), or ``401 {"error": "invalid_client"}``.
``GET /multipass/api/me`` with ``Authorization: Bearer TOKEN`` says whose token it is while it is
valid, and ``401`` once it expired: how code (and tests) see that a token really expires.

The same listener serves the query API; both sit behind the runtime's own CA, so the CA file is what
``DEFAULT_CA_PATH`` names for a module using application permissions locally.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

from cmworker.runtime.wire import Exchange, HttpError

TOKEN_PATH = "/multipass/api/oauth2/token"
ME_PATH = "/multipass/api/me"
_FORM_LIMIT = 64 * 1024


@dataclass(frozen=True)
class _Grant:
    subject: str
    scopes: tuple[str, ...]
    expires_at: float  # time.monotonic()


class Issuer:
    """The client the runtime issued, and the tokens it handed out (thread-safe).

    ``lifetime``: seconds a token lives (its ``expires_in``). ``issued``: how many tokens were handed
    out, ``refused``: how many exchanges were refused.
    """

    def __init__(self, lifetime: float = 3600.0) -> None:
        if lifetime <= 0:
            raise ValueError("token lifetime must be > 0")
        self.lifetime = lifetime
        self.client_id = "cmworker-local-" + secrets.token_hex(6)
        self.client_secret = secrets.token_urlsafe(24)
        self.issued = 0
        self.refused = 0
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    def exchange(self, client_id: str, client_secret: str, scopes: tuple[str, ...]) -> tuple[str, float] | None:
        """A new token and its lifetime for the issued client; ``None`` for any other credentials."""
        good = hmac.compare_digest(client_id.encode(), self.client_id.encode()) and \
            hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        with self._lock:
            if not good:
                self.refused += 1
                return None
            self.issued += 1
            return self._grant(f"client:{client_id}", scopes, self.lifetime), self.lifetime

    def job_token(self, lifetime: float = 24 * 3600.0) -> str:
        """A pipeline job token (what ``BUILD2_TOKEN`` holds)."""
        with self._lock:
            return self._grant("pipeline-job", ("pipeline",), lifetime)

    def _grant(self, subject: str, scopes: tuple[str, ...], lifetime: float) -> str:
        now = time.monotonic()
        self._grants = {token: g for token, g in self._grants.items() if g.expires_at > now}
        token = secrets.token_urlsafe(32)
        self._grants[token] = _Grant(subject, scopes, now + lifetime)
        return token

    def holder(self, token: str) -> _Grant | None:
        """Whose ``token`` is, while it is valid."""
        with self._lock:
            grant = self._grants.get(token)
        return grant if grant is not None and grant.expires_at > time.monotonic() else None


class _App(Protocol):
    def body_limit(self, exchange: Exchange) -> int: ...
    def handle(self, exchange: Exchange) -> None: ...


class TokenService:
    """The token endpoints in front of ``inner`` (the query API), which gets every other request."""

    def __init__(self, issuer: Issuer, inner: _App) -> None:
        self.issuer = issuer
        self.inner = inner

    def body_limit(self, exchange: Exchange) -> int:
        return _FORM_LIMIT if exchange.path == TOKEN_PATH else self.inner.body_limit(exchange)

    def handle(self, exchange: Exchange) -> None:
        if exchange.path == TOKEN_PATH:
            self._token(exchange)
        elif exchange.path == ME_PATH:
            self._me(exchange)
        else:
            self.inner.handle(exchange)

    def _token(self, exchange: Exchange) -> None:
        if exchange.method != "POST":
            raise HttpError(405, f"{exchange.method} is not allowed on {TOKEN_PATH}", headers=[("Allow", "POST")])
        form = {k: v[-1] for k, v in parse_qs(exchange.read_body(_FORM_LIMIT).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            _oauth_error(exchange, 400, "unsupported_grant_type", "only grant_type=client_credentials is served")
            return
        scopes = tuple(form.get("scope", "").split())
        granted = self.issuer.exchange(form.get("client_id", ""), form.get("client_secret", ""), scopes)
        if granted is None:
            _oauth_error(exchange, 401, "invalid_client", "unknown client_id or wrong client_secret")
            return
        token, lifetime = granted
        _reply(exchange, 200, {"access_token": token, "token_type": "bearer", "expires_in": lifetime,
                               "scope": " ".join(scopes)})

    def _me(self, exchange: Exchange) -> None:
        scheme, _, token = exchange.headers.get("authorization", "").partition(" ")
        grant = self.issuer.holder(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            _oauth_error(exchange, 401, "invalid_token", "missing, unknown or expired token")
            return
        _reply(exchange, 200, {"subject": grant.subject, "scopes": list(grant.scopes),
                               "expiresIn": round(grant.expires_at - time.monotonic(), 3)})


def _reply(exchange: Exchange, status: int, value: Any) -> None:
    exchange.reply(status, json.dumps(value).encode(), headers=[("Cache-Control", "no-store")])


def _oauth_error(exchange: Exchange, status: int, error: str, description: str) -> None:
    _reply(exchange, status, {"error": error, "error_description": description})
