"""ldm's client and main against a real uvicorn serving the API on a Unix socket (in a thread), with
stand-in operations; listings go through the real formatters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from ldoms import errors
from ldoms.cli import main as ldm
from ldoms.cli.client import Client, error_from_body
from ldoms.daemon.api import create_app
from ldoms.daemon.host import Host
from ldoms.daemon.sockpath import bind_unix
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.machine import Machine
from ldoms.ops.base import OpContext, OpResult, Request, VerbSpec
from ldoms.store import Store
from tests.conftest import Reaper
from tests.unit.test_daemon_host import fake_run
from tests.unit.test_store import machine


def run_op(m: Machine, req: Request, ctx: OpContext) -> OpResult:
    if req.verb == "add-domain" and "-i" in req.flags:
        return OpResult(machine=m, messages=(f"read {len(req.flags['-i'])} characters",))
    if req.verb == "add-domain":
        return fake_run(m, Request(verb="add", operands=req.operands), ctx)
    if req.verb == "start-domain":
        raise errors.StateError(f"LDom {req.operands[0]} is inactive: start requires it to be bound")
    return fake_run(m, req, ctx)


@pytest.fixture
def home(tmp_path: Path, reaper: Reaper) -> Iterator[Path]:
    store = Store(tmp_path / "state.db")
    store.create_host(machine(), listen="127.0.0.1:8101")
    host = Host(
        machine=machine(),
        store=store,
        guests=GuestSupervisor(reaper.watch(tmp_path / "guests")),
        listen="127.0.0.1:8101",
        run_op=run_op,
    )
    sock = bind_unix(tmp_path / "ldmd.sock")
    server = uvicorn.Server(uvicorn.Config(create_app(host), log_config=None, lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  (not the main thread)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield tmp_path
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def run(home: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = ldm.main(["--home", str(home), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_client_view_and_op(home: Path) -> None:
    c = Client(home)
    assert c.view().machine == machine()
    assert c.host()["name"] == "h1"
    assert c.op(Request(verb="add-domain", operands=("ldg3",))) == ["added"]
    assert c.view().machine.find("ldg3") is not None


def test_client_rebuilds_typed_errors(home: Path) -> None:
    with pytest.raises(errors.StateError, match="LDom ldg1 is inactive") as info:
        Client(home).op(Request(verb="start-domain", operands=("ldg1",)))
    assert info.value.exit_code == 1
    with pytest.raises(errors.UsageError, match="Malformed request") as info2:
        Client(home)._call("POST", "/v1/ops", {"verb": 5})
    assert info2.value.exit_code == 2


def test_error_body_mapping() -> None:
    e = error_from_body(409, {"code": "busy", "message": "m", "exit_code": 3})
    assert isinstance(e, errors.BusyError) and e.exit_code == 3
    e = error_from_body(500, {"code": "something-new", "message": "m", "exit_code": 1})
    assert type(e) is errors.LdmError and e.code == "something-new"
    e = error_from_body(502, "<html>")
    assert "HTTP 502 without an error message" in e.message


def test_daemon_not_running_is_one_line_naming_the_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(tmp_path, capsys, "ls")
    assert rc == 1 and out == ""
    assert err == (
        f"Failed to connect to logical domain manager: no ldmd is serving home {tmp_path} "
        f"({tmp_path / 'ldmd.sock'}: No such file or directory)\n"
    )
    (tmp_path / "ldmd.sock").write_text("")  # a stale file, no server
    rc, _, err = run(tmp_path, capsys, "ls")
    assert rc == 1 and "Connection refused" in err


def test_mutating_verb_prints_messages(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(home, capsys, "add-domain", "ldg3") == (0, "added\n", "")


def test_refusal_prints_one_line_and_exits_with_its_code(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(home, capsys, "start-domain", "ldg1")
    assert (rc, out) == (1, "")
    assert err == "LDom ldg1 is inactive: start requires it to be bound\n"


def test_file_flag_is_read_and_sent(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d.xml"
    f.write_text("<LDM_interface/>")
    assert run(home, capsys, "add-domain", "-i", str(f)) == (0, "read 16 characters\n", "")
    rc, _, err = run(home, capsys, "add-domain", "-i", str(tmp_path / "nope.xml"))
    assert rc == 1 and err == f"Unable to read file {tmp_path / 'nope.xml'}: No such file or directory\n"


def test_listing_goes_through_checks_and_formatter(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(home, capsys, "ls")
    assert rc == 0 and out.splitlines()[0].startswith("NAME") and "ldg1" in out
    rc, out, err = run(home, capsys, "ls", "nosuch")
    assert (rc, out, err) == (1, "", "LDom nosuch not found\n")
    rc, out, _ = run(home, capsys, "list-spconfig")
    assert rc == 0 and "initial" in out
    rc, out, _ = run(home, capsys, "list-variable", "primary")
    assert (rc, out) == (0, "auto-boot?=true\n")
    rc, out, _ = run(home, capsys, "-V")
    assert rc == 0 and "Logical Domain Manager" in out


def test_every_listing_verb_is_wired() -> None:
    from ldoms.ops.base import REGISTRY

    ldm.general_help()  # registers the verbs
    listing = {name for name, op in REGISTRY.items() if not op.spec.mutates}
    assert listing <= set(ldm.FORMATTERS)


def test_usage_error_is_exit_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(home, capsys, "ls", "-z")
    assert (rc, out) == (2, "")
    assert err.startswith("Unknown option -z. Usage: ldm list-domain") and err.count("\n") == 1
    rc, _, err = run(home, capsys, "frobnicate")
    assert rc == 2 and err == "Unknown command: frobnicate: run 'ldm --help' for the list of commands\n"
    rc, _, err = run(home, capsys, "-V", "x")
    assert rc == 2 and "Option -V takes no operands" in err
    rc, _, err = ldm.main(["--home"]), *capsys.readouterr()
    assert rc == 2 and "Option --home requires a directory" in err


def test_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv in ([], ["--help"]):
        assert ldm.main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage:\n    ldm [--home DIR] [--help] command")
        assert "    list-domain [-e] [-l] [-o format] [-p] [ldom...]" in out
    assert ldm.main(["--home", str(tmp_path), "--help", "rm-vcpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage:\n    ldm remove-vcpu") and "rm-vcpu" in out
    assert ldm.main(["--home=" + str(tmp_path), "ls", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage:\n    ldm list-domain")
    assert ldm.main(["--help", "nosuch"]) == 2


def test_usage_lines_split_only_whole_alternatives() -> None:
    spec = VerbSpec(name="add-memory", usage="add-memory size ldom | add-memory mblock=PA:size ldom")
    assert ldm._usage_lines(spec) == ["add-memory size ldom", "add-memory mblock=PA:size ldom"]
    spec = VerbSpec(name="cancel-operation", usage="cancel-operation (migration | reconf) ldom")
    assert ldm._usage_lines(spec) == ["cancel-operation (migration | reconf) ldom"]


def test_a_socket_or_daemon_of_another_user_is_refused(tmp_path: Path) -> None:
    import os

    from ldoms.cli.client import ForeignSocket, check_owner

    check_owner(tmp_path / "ldmd.sock", os.getuid(), "socket")  # ours: fine
    check_owner(tmp_path / "ldmd.sock", 0, "ldmd serving it")  # root's: fine
    with pytest.raises(ForeignSocket, match=r"the ldmd serving it belongs to uid 4242, not to you"):
        check_owner(tmp_path / "ldmd.sock", 4242, "ldmd serving it")
