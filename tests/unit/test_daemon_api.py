"""The local API: view, ops, error bodies, garbage in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ldoms import errors
from ldoms.daemon.api import MAX_BODY, create_app, http_status
from ldoms.daemon.host import Host
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.codec import decode
from ldoms.model.view import HostView
from ldoms.store import Store
from tests.conftest import Reaper
from tests.unit.test_daemon_host import fake_run
from tests.unit.test_store import machine


@pytest.fixture
def client(tmp_path: Path, reaper: Reaper) -> TestClient:
    store = Store(tmp_path / "state.db")
    store.create_host(machine(), listen="127.0.0.1:8101")
    host = Host(
        machine=machine(),
        store=store,
        guests=GuestSupervisor(reaper.watch(tmp_path / "guests")),
        listen="127.0.0.1:8101",
        run_op=fake_run,
    )
    return TestClient(create_app(host), raise_server_exceptions=False)


def test_view_decodes_to_an_equal_machine(client: TestClient) -> None:
    r = client.get("/v1/view")
    assert r.status_code == 200
    view = decode(HostView, r.json())
    assert view.machine == machine()


def test_host_info(client: TestClient) -> None:
    assert client.get("/v1/host").json()["name"] == "h1"


def test_op_answers_messages(client: TestClient) -> None:
    r = client.post("/v1/ops", json={"verb": "add", "operands": ["ldg3"]})
    assert r.status_code == 200 and r.json() == {"messages": ["added"]}
    assert any(d["config"]["name"] == "ldg3" for d in client.get("/v1/view").json()["machine"]["domains"])


def test_refusal_is_an_error_body(client: TestClient) -> None:
    r = client.post("/v1/ops", json={"verb": "refuse"})
    assert r.status_code == 404
    assert r.json() == {"code": "not-found", "message": "LDom nosuch not found", "exit_code": 1}


def test_bug_is_a_500_and_the_daemon_keeps_serving(client: TestClient) -> None:
    r = client.post("/v1/ops", json={"verb": "explode"})
    assert r.status_code == 500 and r.json()["code"] == "internal"
    assert "Internal error in explode: KeyError" in r.json()["message"]
    assert client.get("/v1/view").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'"verb"',
        json.dumps({"verb": "add", "extra": 1}).encode(),
        json.dumps({"verb": ""}).encode(),
        json.dumps({"verb": "add", "flags": {"-a": [1]}}).encode(),
        json.dumps({"verb": "add", "props": [["a"]]}).encode(),
        json.dumps({"verb": "x" * 1000}).encode(),
        bytes(range(256)),
    ],
)
def test_malformed_bodies_are_422(client: TestClient, body: bytes) -> None:
    r = client.post("/v1/ops", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["code"] == "usage" and r.json()["exit_code"] == 2


def test_huge_body_is_413(client: TestClient) -> None:
    r = client.post("/v1/ops", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "too-large"


def test_huge_streamed_body_without_length_is_413(client: TestClient) -> None:
    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    r = client.post("/v1/ops", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method_are_error_bodies(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["code"] == "not-found"
    r = client.delete("/v1/view")
    assert r.status_code == 405 and r.json()["code"] == "http"


def test_openapi_schema_describes_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/view", "/v1/ops", "/v1/host"} <= set(schema["paths"])
    assert "409" in schema["paths"]["/v1/ops"]["post"]["responses"]


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (errors.UsageError("x"), 400),
        (errors.NotFoundError("x"), 404),
        (errors.StateError("x"), 409),
        (errors.BusyError("x"), 409),
        (errors.AuthError("x"), 403),
        (errors.OpExecError("x"), 500),
        (errors.DaemonUnavailable("x"), 503),
    ],
)
def test_http_status(err: errors.LdmError, status: int) -> None:
    assert http_status(err) == status


def test_stalled_body_is_408() -> None:
    import asyncio

    from ldoms.daemon.api import BodyLimit

    sent: list[dict[str, object]] = []

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the application must not see a stalled request")

    async def receive() -> dict[str, object]:
        await asyncio.sleep(3600)
        return {}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [], "method": "POST", "path": "/v1/ops"}
    asyncio.run(BodyLimit(app, 100, timeout_s=0.05)(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 408
    assert b"not received within 0.05 s" in sent[1]["body"]  # type: ignore[operator]
