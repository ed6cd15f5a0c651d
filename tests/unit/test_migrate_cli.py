"""`ldm migrate-domain` in the CLI (password, body, output, exit status) and `POST /v1/migrate` in the API."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ldoms.binding import factory_default
from ldoms.cli import main as cli
from ldoms.cli.parse import parse_args
from ldoms.daemon.api import create_app
from ldoms.daemon.host import Host
from ldoms.errors import NotFoundError, UsageError
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.migration.engine_source import MigrationRequest
from ldoms.migration.events import Role
from ldoms.migration.precopy_knobs import PrecopyPolicy
from ldoms.migration.runstate import Outcome, RunState
from ldoms.model.domain import Domain, DomainConfig
from ldoms.model.platforms import load_platform
from ldoms.model.view import HostView
from ldoms.ops.base import lookup
from ldoms.peer.errors import PasswordFileError
from ldoms.store import Store

FAILED = Outcome(
    ok=False,
    lines=(
        "Unable to bind 2G memory region at real address 0x8000000",
        "Domain Migration of LDom ldg1 failed",
    ),
    exit_code=1,
    problems=({"code": "mem-layout", "message": "Unable to bind ...", "side": "target"},),
)


def machine():  # type: ignore[no-untyped-def]
    m = factory_default(load_platform("t5240"), "h1", seed=1)
    return m.with_domain(Domain(config=DomainConfig(name="ldg1", uuid="u", hostid=1, mac=1)))


class FakeClient:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.bodies: list[dict[str, Any]] = []

    def view(self) -> HostView:
        return HostView(machine=machine(), now=0.0)

    def migrate(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.bodies.append(body)
        yield {"type": "progress", "percent": 10}
        yield self.outcome.to_json()


def run(client: FakeClient, *words: str) -> tuple[int, str, str]:
    op = lookup("migrate-domain")
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run_migrate(client, op, parse_args(op.spec, list(words)), out, err)  # type: ignore[arg-type]
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    p = tmp_path / "pw"
    p.write_text("hunter2\n")
    p.chmod(0o600)
    return p


def test_success_is_silent_and_the_password_travels_in_the_body(pwfile: Path) -> None:
    c = FakeClient(Outcome(ok=True))
    assert run(c, "-p", str(pwfile), "ldg1", "root@h2:ldg9") == (0, "", "")
    (body,) = c.bodies
    assert (
        body["password"] == "hunter2" and body["flags"] == {} and body["operands"] == ["ldg1", "root@h2:ldg9"]
    )


def test_failure_prints_every_line_on_stderr(pwfile: Path) -> None:
    rc, out, err = run(FakeClient(FAILED), "-p", str(pwfile), "ldg1", "h2")
    assert (rc, out) == (1, "")
    assert (
        err
        == "Unable to bind 2G memory region at real address 0x8000000\nDomain Migration of LDom ldg1 failed\n"
    )


def test_dry_run_json(pwfile: Path) -> None:
    rc, out, err = run(FakeClient(FAILED), "-n", "--json", "-p", str(pwfile), "ldg1", "h2:other")
    doc = json.loads(out)
    assert (rc, err) == (1, "")
    assert doc["would_succeed"] is False and doc["target_domain"] == "other"
    assert doc["problems"][0]["code"] == "mem-layout"


def test_prompt_and_certificate_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(
        cli, "ask_password", lambda prompt="Target Password: ": asked.append(prompt) or "typed"
    )
    c = FakeClient(Outcome(ok=True))
    assert run(c, "ldg1", "h2")[0] == 0
    assert asked == ["Target Password: "] and c.bodies[0]["password"] == "typed"
    assert run(c, "-c", "ldg1", "h2")[0] == 0
    assert asked == ["Target Password: "] and c.bodies[1]["password"] is None  # -c asks for nothing


def test_local_refusals_come_before_the_prompt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "ask_password", lambda prompt="": pytest.fail("asked for a password"))
    c = FakeClient(Outcome(ok=True))
    with pytest.raises(NotFoundError, match="LDom nosuch not found"):
        run(c, "nosuch", "h2")
    with pytest.raises(UsageError, match="the user name before '@' is empty"):
        run(c, "ldg1", "@h2")
    with pytest.raises(PasswordFileError, match="does not exist"):
        run(c, "-p", str(tmp_path / "none"), "ldg1", "h2")
    assert c.bodies == []


def test_end_of_input_at_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", eof)
    with pytest.raises(UsageError, match="No target password was entered"):
        cli.ask_password()


# ---------------------------------------------------------------------------------------------------- API
class FakeManager:
    def __init__(self) -> None:
        self.requests: list[MigrationRequest] = []

    def start(self, req: MigrationRequest) -> RunState:
        self.requests.append(req)
        run = RunState(domain=req.source, role=Role.SOURCE, peer=req.target_host)
        run.set_progress(40)
        run.finish(FAILED)
        return run

    def intercept(self, request: object) -> None:
        return None

    def defaults(self) -> PrecopyPolicy:
        return PrecopyPolicy(max_downtime_s=0.5)

    def statuses(self) -> tuple[()]:
        return ()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, FakeManager]]:
    store = Store(tmp_path / "state.db")
    m = machine()
    store.create_host(m, listen="127.0.0.1:1")
    host = Host(machine=m, store=store, guests=GuestSupervisor(tmp_path / "g"), listen="127.0.0.1:1")
    mgr = FakeManager()
    host.migrations = mgr
    with TestClient(create_app(host)) as c:
        yield c, mgr


def test_api_streams_progress_then_the_result(api: tuple[TestClient, FakeManager]) -> None:
    client, mgr = api
    body = {"flags": {"-n": True}, "operands": ["ldg1", "h2"], "password": "pw", "user": "alice"}
    r = client.post("/v1/migrate", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    items = [json.loads(line) for line in r.text.splitlines()]
    assert (items[0]["type"], items[0]["percent"]) == ("progress", 40)
    assert items[-1]["type"] == "result" and items[-1]["problems"][0]["code"] == "mem-layout"
    (req,) = mgr.requests
    assert (req.user, req.password, req.dry_run, req.target_ldom) == ("alice", "pw", True, "ldg1")
    assert req.precopy == PrecopyPolicy(max_downtime_s=0.5)  # the host's defaults


def test_api_applies_the_knobs_over_the_host_defaults(api: tuple[TestClient, FakeManager]) -> None:
    client, mgr = api
    body = {"flags": {}, "operands": ["ldg1", "h2"], "password": "pw", "user": "alice",
            "props": [["bandwidth", "500M"], ["auto-converge", "off"], ["max-time", "2m"]]}  # fmt: skip
    assert client.post("/v1/migrate", json=body).status_code == 200
    (req,) = mgr.requests
    assert req.precopy == PrecopyPolicy(
        max_downtime_s=0.5, bandwidth_cap=500 * 1024 * 1024, auto_converge=False, max_time_s=120.0
    )
    body["props"] = [["max-downtime", "fast"]]
    r = client.post("/v1/migrate", json=body)
    assert r.status_code == 400 and "Invalid max-downtime 'fast'" in r.json()["message"]
    body["props"] = [["colour", "red"]]
    r = client.post("/v1/migrate", json=body)
    assert r.status_code == 400 and "Invalid property 'colour' for migrate-domain" in r.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "why"),
    [
        ({"operands": ["ldg1", "h2:"]}, 400, "the target domain name after ':' is empty"),
        ({"operands": ["ldg1", "h2"], "user": "alice"}, 400, "No target password"),
        ({"operands": ["ldg1", "h2"], "password": "x"}, 400, "No user to log in as on h2"),
        ({"operands": ["ldg1", "h2"], "password": "x", "user": "bad user"}, 400, "invalid user name"),
        ({"operands": ["ldg1"]}, 422, "Malformed request"),
        ({"operands": ["a", "b"], "extra": 1}, 422, "Malformed request"),
    ],
)
def test_api_refusals(
    api: tuple[TestClient, FakeManager], body: dict[str, Any], status: int, why: str
) -> None:
    client, mgr = api
    r = client.post("/v1/migrate", json=body)
    assert r.status_code == status and why in r.json()["message"]
    assert mgr.requests == []


def test_plain_operations_route_refuses_migrate(api: tuple[TestClient, FakeManager]) -> None:
    client, _ = api
    r = client.post("/v1/ops", json={"verb": "migrate", "operands": ["ldg1", "h2"]})
    assert r.status_code == 500 and "POST /v1/migrate" in r.json()["message"]
