"""Code written for Foundry, served unchanged by a real ``cmworker dev``: application permissions (cmworker's
``oauth_token``/``RefreshingToken`` and the SDK's ``oauth``/``RefreshingOauthToken``) against the
embedded runtime's token endpoint, sources from a ``--sources`` file read through the SDK's helpers and
the context, and the schema of an ``edits=`` function as posted to the runtime, equal to the SDK's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cmworker.app.registry import isolated_registry, load_app
from cmworker.runtime.discovery import find_runtime
from tests.dev_harness import ROOT, WAIT, DevServer, dev_server

pytestmark = pytest.mark.timeout(120)
SCOPES = ["api:datasets-read"]
TYPE_IDS = {"Aircraft": "aircraft-type-id", "Flight": "flight-type-id"}
SOURCES = {"weather": {"secrets": {"apiKey": "k3y-for-the-weather"}, "url": "https://weather.example.com",
                       "configuration": {"region": "eu-west"}},
           "archive": {"secrets": {"user": "archivist", "password": "pa55-archive"}}}

APP = '''
import os

import cmworker
from cmworker.auth import RefreshingToken, foundry_host, oauth_token

SCOPES = ["api:datasets-read"]
TOKEN = RefreshingToken(None, SCOPES)  # FOUNDRY_HOST, read when it first fetches


@cmworker.function
def cm_token(context, event):
    return {"token": oauth_token(None, SCOPES), "refreshing": TOKEN.get(), "host": foundry_host(),
            "ca": os.environ["DEFAULT_CA_PATH"], "client_id": os.environ["CLIENT_ID"],
            "context_client_id": context["CLIENT_ID"]}


@cmworker.function
def sdk_token(context, event):
    # The official SDK's own application-permission code, as an app written for it calls it.
    from compute_modules.auth import RefreshingOauthToken, oauth

    host = os.environ["FOUNDRY_HOST"]
    return {"token": oauth(host, SCOPES), "refreshing": RefreshingOauthToken(host, SCOPES).get_token()}


@cmworker.function
def sources(context, event):
    from compute_modules.sources import get_source_config, get_source_secret

    answer = {"v1_secret": get_source_secret("weather", "apiKey"), "v1_config": get_source_config("weather"),
              "context_sources": context["sources"],
              "context_config": context["source_configs"]["weather"]}
    if event.get("v2"):
        from compute_modules.sources_v2 import get_source

        weather = get_source("weather")
        answer.update(v2_secret=weather.get_secret("apiKey"), v2_url=weather.get_https_connection().url,
                      v2_password=get_source("archive").get_secret("password"))
    return answer


class Aircraft:
    @staticmethod
    def api_name():
        return "Aircraft"


class Flight:
    @staticmethod
    def api_name():
        return "Flight"


@cmworker.function(edits=[Aircraft, Flight])
def ground(context, event: dict) -> list[str]:
    return [event["flight"]]


@cmworker.function(edits=[Flight])
def delay(context, event: dict) -> int:
    return event["minutes"]
'''


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    tmp = tmp_path_factory.mktemp("dev_foundry")
    (tmp / "sources.json").write_text(json.dumps(SOURCES))
    (tmp / "ontology_metadata_config.json").write_text(json.dumps({"apiNameToTypeId": TYPE_IDS}))
    # Nothing of application permissions or sources comes from the test's own environment.
    clean = {name: "" for name in ("CLIENT_ID", "CLIENT_SECRET", "DEFAULT_CA_PATH", "FOUNDRY_HOST",
                                   "SOURCE_CREDENTIALS", "SOURCE_CONFIGURATIONS_PATH")}
    with dev_server(tmp, APP, "--sources", "sources.json", "--no-reload", env=clean) as server:
        yield server


def _holder(dev: DevServer, token: str) -> dict[str, Any]:
    """Whose ``token`` is, asked of the runtime that ``cmworker dev`` announced (its own CA, its own port)."""
    info = find_runtime(dev.state)
    reply = requests.get(f"{info.url}/multipass/api/me", headers={"Authorization": f"Bearer {token}"},
                         verify=info.ca, timeout=10)
    assert reply.status_code == 200, reply.text
    holder: dict[str, Any] = reply.json()
    return holder


def _call(dev: DevServer, function: str, payload: str = "{}") -> Any:
    done = dev.cli("call", function, payload, "--timeout", str(WAIT))
    assert done.returncode == 0, done.stdout + done.stderr + dev.text()
    return json.loads(done.stdout)


def test_dev_says_application_permissions_and_sources_are_emulated(dev: DevServer) -> None:
    text = dev.text()
    assert "application permissions emulated: CLIENT_ID=cmworker-local-" in text
    assert "sources emulated from sources.json: archive, weather" in text
    assert SOURCES["weather"]["secrets"]["apiKey"] not in text  # type: ignore[index]


def test_cmworker_auth_gets_a_token_the_runtime_issued_under_dev(dev: DevServer) -> None:
    answer = _call(dev, "cm_token")
    info = find_runtime(dev.state)
    assert answer["host"] == info.url.removeprefix("https://")
    assert answer["ca"] == info.ca
    assert answer["context_client_id"] == answer["client_id"]
    for token in (answer["token"], answer["refreshing"]):
        assert _holder(dev, token)["subject"] == f"client:{answer['client_id']}"
        assert token not in dev.text()  # a log secret, never on the console


def test_the_sdks_own_oauth_runs_unchanged_under_dev(dev: DevServer) -> None:
    answer = _call(dev, "sdk_token")
    assert isinstance(answer["token"], str) and isinstance(answer["refreshing"], str)  # None when refused
    assert _holder(dev, answer["token"])["subject"].startswith("client:cmworker-local-")
    assert _holder(dev, answer["refreshing"])["scopes"] == SCOPES


def test_sources_file_reaches_the_sdks_v1_helpers_and_the_context(dev: DevServer) -> None:
    answer = _call(dev, "sources")
    assert answer["v1_secret"] == "k3y-for-the-weather"
    assert answer["v1_config"] == {"region": "eu-west"}
    assert answer["context_sources"] == {name: s["secrets"] for name, s in SOURCES.items()}
    assert answer["context_config"] == {"region": "eu-west"}


def test_sources_file_reaches_the_sdks_v2_get_source(dev: DevServer) -> None:
    pytest.importorskip("external_systems")
    pytest.importorskip("yaml")
    answer = dev.call("sources", {"v2": True})
    assert answer["v2_secret"] == "k3y-for-the-weather" and answer["v2_password"] == "pa55-archive"
    assert answer["v2_url"] == "https://weather.example.com"


def test_served_edits_schema_is_the_sdks_for_the_metadata_config_in_the_working_directory(dev: DevServer) -> None:
    from compute_modules.function_registry.function import Function

    deadline = time.monotonic() + WAIT
    with dev.client() as client:
        posted = {s["functionName"]: s for s in client.functions()}
        while not {"ground", "delay"} <= set(posted) and time.monotonic() < deadline:
            time.sleep(0.05)
            posted = {s["functionName"]: s for s in client.functions()}
    sys.modules.pop("app", None)
    try:
        with isolated_registry():
            specs = dict(load_app(str(dev.tmp / "app.py")))
    finally:
        sys.modules.pop("app", None)
    for name in ("ground", "delay"):
        sdk = Function(specs[name].fn, list(specs[name].edits)).get_function_schema(TYPE_IDS)
        assert json.dumps(posted[name]) == json.dumps(sdk)
    assert posted["ground"]["ontologyProvenance"] == {
        "editedObjects": {"aircraft-type-id": {}, "flight-type-id": {}}, "editedLinks": {}}
    assert posted["delay"]["ontologyProvenance"] == {"editedObjects": {"flight-type-id": {}}, "editedLinks": {}}
    assert posted["cm_token"]["ontologyProvenance"] is None


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot read it"),
    ("{not json", "not JSON"),
    ('{"weather": {"secret": {}}}', "unknown field(s) secret"),
    ('{"weather": {"secrets": {"apiKey": 1}}}', "secrets must be an object of strings"),
])
def test_a_bad_sources_file_stops_dev_naming_it(tmp_path: Path, content: str | None, words: str) -> None:
    (tmp_path / "app.py").write_text("import cmworker\n")
    if content is not None:
        (tmp_path / "sources.json").write_text(content)
    done = subprocess.run([sys.executable, "-m", "cmworker", "dev", "app.py", "--sources", "sources.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT,
                          env={**os.environ, "CMWORKER_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)})
    output = done.stdout + done.stderr  # SLS lines on stdout: the output is not a terminal
    assert done.returncode == 2, output
    assert "--sources sources.json" in output and words in output
