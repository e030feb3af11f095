"""Application permissions and pipeline credentials (``cmworker.auth``, ``cmworker.resources``) against the
embedded runtime's token service: real HTTPS on loopback, verified with the runtime's CA."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cmworker.auth import RefreshingToken, fetch_token, oauth_token, pipeline_token
from cmworker.errors import AuthFailed, NotProvided
from cmworker.resources import PipelineResource, pipeline_resource, pipeline_resources
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import cmworker_run, decoded_answer

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0
SCOPES = ["api:datasets-read"]


@pytest.fixture
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=0.5, token_lifetime=1.0) as rt:
        yield rt


@pytest.fixture
def app_env(runtime: EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = runtime.application_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env




def _whoami(rt: EmbeddedRuntime, token: str) -> int:
    return requests.get(f"https://{rt.foundry_host}/multipass/api/me", headers={"Authorization": f"Bearer {token}"},
                        verify=str(rt.ca_path), timeout=10).status_code


# --- a served app --------------------------------------------------------------------------------

def test_served_app_gets_a_token_and_renews_it_after_it_expires(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with cmworker_run(runtime, tmp_path, "", app="auth_app.py", workers=1, env=runtime.application_env()):
        first = decoded_answer(runtime, runtime.submit("use_token"))
        assert first["status"] == 200 and first["fetches"] == 1
        again = decoded_answer(runtime, runtime.submit("use_token"))
        assert again["token"] == first["token"] and again["fetches"] == 1  # still fresh: no request
        time.sleep(1.2)  # past the token's expires_in (1 s)
        renewed = decoded_answer(runtime, runtime.submit("use_token"))
    assert renewed["fetches"] == 2 and renewed["token"] != first["token"]
    assert renewed["status"] == 200
    assert renewed["first_token_status"] == 401  # the first token did expire
    assert runtime.oauth.issued == 2
    assert runtime.oauth.client_secret not in (tmp_path / "run.log").read_text()


def test_served_app_with_a_wrong_secret_fails_clearly(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    env = {**runtime.application_env(), "CLIENT_SECRET": "not-the-secret"}
    with cmworker_run(runtime, tmp_path, "", app="auth_app.py", workers=1, env=env):
        answer = decoded_answer(runtime, runtime.submit("one_token"))
    assert answer["kind"] == "exception"
    assert "AuthFailed" in answer["exception"] and "HTTP 401" in answer["exception"]
    assert "invalid_client" in answer["exception"] and runtime.oauth.client_id in answer["exception"]
    assert runtime.oauth.refused == 1 and runtime.oauth.issued == 0


# --- in this process -----------------------------------------------------------------------------

def test_many_threads_asking_at_once_cause_one_request(runtime: EmbeddedRuntime, app_env: dict[str, str]) -> None:
    token = RefreshingToken(runtime.foundry_host, SCOPES)
    start = threading.Barrier(16)
    got: list[str] = []

    def ask() -> None:
        start.wait()
        got.append(token.get())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(got) == 16 and len(set(got)) == 1
    assert runtime.oauth.issued == 1 and token.fetches == 1
    assert _whoami(runtime, got[0]) == 200


def test_token_is_renewed_before_it_expires(runtime: EmbeddedRuntime, app_env: dict[str, str]) -> None:
    token = RefreshingToken(runtime.foundry_host, SCOPES)
    asked = time.monotonic()
    first = token.get()
    time.sleep(0.82)  # inside the last fifth of its 1 s life
    second = token.get()
    still_valid = _whoami(runtime, first) == 200
    assert second != first and runtime.oauth.issued == 2
    if time.monotonic() - asked < 0.95:  # a loaded machine may have slept past the expiry: nothing to show
        assert still_valid  # the old one was still valid when it was replaced


def test_the_expires_in_of_the_endpoint_is_used(runtime: EmbeddedRuntime, app_env: dict[str, str]) -> None:
    token = fetch_token(runtime.foundry_host, SCOPES)
    assert token.expires_in == 1.0
    assert token.value not in repr(token)


def test_a_wrong_secret_is_refused_with_the_status(runtime: EmbeddedRuntime, app_env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_SECRET", "wrong")
    with pytest.raises(AuthFailed, match="refused the exchange") as raised:
        oauth_token(runtime.foundry_host, SCOPES)
    assert raised.value.status == 401


@pytest.mark.parametrize("missing", ["CLIENT_ID", "CLIENT_SECRET"])
def test_missing_client_variables_are_named(runtime: EmbeddedRuntime, app_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.delenv(missing)
    with pytest.raises(NotProvided, match=rf"{missing} is not set.*application permissions"):
        oauth_token(runtime.foundry_host, SCOPES)


def test_a_missing_ca_file_is_named(runtime: EmbeddedRuntime, app_env: dict[str, str],
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEFAULT_CA_PATH", str(tmp_path / "nope.pem"))
    with pytest.raises(NotProvided, match=r"DEFAULT_CA_PATH names .*nope.pem"):
        oauth_token(runtime.foundry_host, SCOPES)


def test_without_a_host_foundry_host_is_used_and_named_when_unset(runtime: EmbeddedRuntime, app_env: dict[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    token = RefreshingToken(None, SCOPES)  # FOUNDRY_HOST is read when it fetches, not when it is made
    assert _whoami(runtime, oauth_token(None, SCOPES)) == 200 and _whoami(runtime, token.get()) == 200
    monkeypatch.delenv("FOUNDRY_HOST")
    with pytest.raises(NotProvided, match="FOUNDRY_HOST is not set"):
        RefreshingToken(None, SCOPES).get()


def test_the_sdks_own_oauth_works_unchanged_against_the_runtime(runtime: EmbeddedRuntime,
                                                                 app_env: dict[str, str]) -> None:
    from compute_modules.auth import oauth

    token = oauth(runtime.foundry_host, SCOPES)
    assert isinstance(token, str) and _whoami(runtime, token) == 200


# --- pipeline credentials ------------------------------------------------------------------------

def test_pipeline_token_and_resources_from_the_emulated_environment(runtime: EmbeddedRuntime,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env = runtime.pipeline_env({"orders": ("ri.foundry.main.dataset.1", "master"),
                                "scored": ("ri.foundry.main.dataset.2", None)})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _whoami(runtime, pipeline_token()) == 200
    resources = pipeline_resources()
    assert resources == {"orders": PipelineResource("ri.foundry.main.dataset.1", "master"),
                         "scored": PipelineResource("ri.foundry.main.dataset.2", None)}
    assert pipeline_resource("scored").branch_or() == "master"
    with pytest.raises(KeyError, match="orders, scored"):
        pipeline_resource("missing")
    from compute_modules.auth import retrieve_pipeline_token
    from compute_modules.resources import get_pipeline_resources

    assert retrieve_pipeline_token() == pipeline_token()  # the SDK reads the same files
    assert get_pipeline_resources()["orders"].rid == resources["orders"].rid


def test_outside_pipeline_mode_the_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BUILD2_TOKEN", raising=False)
    monkeypatch.delenv("RESOURCE_ALIAS_MAP", raising=False)
    with pytest.raises(NotProvided, match=r"BUILD2_TOKEN is not set.*pipeline mode"):
        pipeline_token()
    with pytest.raises(NotProvided, match=r"RESOURCE_ALIAS_MAP is not set.*pipeline mode"):
        pipeline_resources()
    monkeypatch.setenv("BUILD2_TOKEN", str(tmp_path / "gone"))
    with pytest.raises(NotProvided, match=r"BUILD2_TOKEN names .*gone"):
        pipeline_token()
    bad = tmp_path / "aliases.json"
    bad.write_text(json.dumps({"orders": {"branch": "master"}}))
    monkeypatch.setenv("RESOURCE_ALIAS_MAP", str(bad))
    with pytest.raises(NotProvided, match="entry 'orders' is not"):
        pipeline_resources()


def test_importing_cmworker_does_not_load_requests_for_auth() -> None:
    import subprocess
    import sys

    code = "import sys, cmworker; cmworker.resources; print('requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "False", out.stderr
