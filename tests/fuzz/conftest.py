"""Shared pieces of the hostile-input suite: realistic machines for the in-process verb fuzzer, the checks
every rejection must pass, and one real ldmd per test module for the daemon-facing fuzzers.

Machines are built through the same path ldm uses (`parse_args` then `ops.base.run`), so they are states an
administrator can reach: factory default; a configured host (shrunk primary with vds/vsw/vcc services, an
SP configuration, guests `ldg1` active, `ldg2` bound, `ldg3` inactive, each with a vnet, a vdisk and a
variable); and the same host with a delayed reconfiguration of primary pending.

The daemon fixture (`ldmd_host`) starts one ldmd per module in a temporary home (starting one takes about a
second, and every test leaves it as it found it or checks what changed); teardown kills the daemon and every
process naming the home, pass or fail, like the integration suite's `reaper`.

Running it:

    .venv/bin/pytest tests/fuzz              # the default subset (about 40 s on 2 cores; CI runs it)
    .venv/bin/pytest -m slow tests/fuzz      # the long runs: many more examples, the 30 s body timeout

Together the two commands run everything.  A failing example is printed by Hypothesis as a reproducible
call; `test_fuzz_regressions` keeps one deterministic test per bug found so far.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import pytest

from ldoms.binding import factory_default
from ldoms.cli.parse import parse_args
from ldoms.errors import MAX_MESSAGE
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, lookup, run
from tests.conftest import kill_processes_mentioning
from tests.integration.conftest import LdmHost

CTX = OpContext(now=1000.0, random_seed=7)

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What a message must never look like: a traceback, a Python repr of an exception or object, a bare repr of
# bytes, or a placeholder left unformatted.
_BAD_MESSAGE = re.compile(
    r"Traceback \(most recent call last\)"
    r"|\b[A-Z][A-Za-z]*(Error|Exception)\(['\"]"  # KeyError('x'), ValueError("...")
    r"|<[a-zA-Z_.]+ object at 0x"
    r"|\{[a-z_]+\}"
)


def bad_message_reason(message: str) -> str | None:
    """Why `message` is not a clear one-line error, or None when it is."""
    if not message.strip():
        return "the message is empty"
    if "\n" in message.rstrip("\n"):
        return "the message spans several lines"
    if _UNPRINTABLE.search(message.rstrip("\n")):
        return "the message holds a control character or a lone surrogate"
    if len(message) > MAX_MESSAGE + 1 or any(len(word) > 200 for word in message.split()):
        return "the message is not cut short (a hostile value can be megabytes)"
    m = _BAD_MESSAGE.search(message)
    if m:
        return f"the message holds {m.group()!r}"
    return None


def assert_clear_error(message: str) -> None:
    reason = bad_message_reason(message)
    assert reason is None, f"{reason}: {message!r}"


# ------------------------------------------------------------------------------------------- machines
def ldm(machine: Machine, *argv: str) -> Machine:
    """Run one `ldm` command line on a machine, in process; the new machine."""
    op = lookup(argv[0])
    return run(machine, parse_args(op.spec, argv[1:]), CTX).machine


@cache
def factory() -> Machine:
    return factory_default(load_platform("t5240"), "fuzz", seed=1)


@cache
def configured() -> Machine:
    m = factory()
    for argv in (
        ("set-mau", "1", "primary"),
        ("set-vcpu", "8", "primary"),
        ("set-mem", "4G", "primary"),
        ("stop", "primary"),  # the control domain's reboot applies the delayed reconfiguration
        ("add-vds", "primary-vds0", "primary"),
        ("add-vdsdev", "/dev/dsk/c0t1d0s2", "vol1@primary-vds0"),
        ("add-vdsdev", "options=ro", "/var/img2", "vol2@primary-vds0"),
        ("add-vdsdev", "/var/img3", "vol3@primary-vds0"),
        ("add-vdsdev", "/var/img4", "vol4@primary-vds0"),
        ("add-vsw", "net-dev=e1000g0", "primary-vsw0", "primary"),
        ("add-vcc", "port-range=5000-5100", "primary-vcc0", "primary"),
        ("add-spconfig", "initial"),
    ):
        m = ldm(m, *argv)
    for n, state in (("1", "active"), ("2", "bound"), ("3", "inactive")):
        name = f"ldg{n}"
        for argv in (
            ("add-domain", name),
            ("add-vcpu", "8", name),
            ("add-mem", "1G", name),
            ("add-vnet", "vnet1", "primary-vsw0", name),
            ("add-vdisk", "vdisk1", f"vol{n}@primary-vds0", name),
            ("set-var", "auto-boot?=false", name),
        ):
            m = ldm(m, *argv)
        if state != "inactive":
            m = ldm(m, "bind", name)
        if state == "active":
            m = ldm(m, "start", name)
    return m


@cache
def pending() -> Machine:
    """The configured host with primary in a delayed reconfiguration (memory 4G -> 3G at its reboot)."""
    return ldm(configured(), "set-mem", "3G", "primary")


MACHINES = {"factory": factory, "configured": configured, "pending": pending}


# ------------------------------------------------------------------------------------------- a real ldmd
@pytest.fixture(scope="module")
def ldmd_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LdmHost]:
    """One ldmd (t5240, factory default) serving a temporary home for the whole module."""
    base = tmp_path_factory.mktemp("fuzzhost")
    home = (base / "h1").resolve()
    h = LdmHost(home, "h1", "t5240")
    try:
        h.start_ldmd()
        yield h
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()
        kill_processes_mentioning([home])


def ldmd_alive(h: LdmHost) -> None:
    """The daemon still runs and answers a listing through the ldm executable."""
    daemon_answers(h)
    r = h.ldm("ls")
    assert r.stdout.startswith("NAME"), r


def daemon_answers(h: LdmHost) -> None:
    """The daemon still runs and serves its view (in process: cheap enough to check after every input)."""
    assert h.proc is not None and h.proc.poll() is None, f"ldmd exited: {h.stderr_path.read_text()}"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(h.home / "ldmd.sock")), timeout=30) as c:
        r = c.get("http://ldmd/v1/view")
    assert r.status_code == 200 and r.json()["machine"]["domains"][0]["config"]["name"] == "primary"


def ldm_in_process(h: LdmHost, *args: str) -> tuple[int, str, str]:
    """`ldm --home HOME args...` run by `ldoms.cli.main.main` in this process (the executable's code without
    an interpreter start): exit status, stdout, stderr."""
    from ldoms.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--home", str(h.home), *args])
    return rc, out.getvalue(), err.getvalue()


_VOLATILE = re.compile(r"\|(util|uptime)=[^|\n]*")


def state_snapshot(h: LdmHost) -> str:
    """Everything the host holds, as `ldm list-constraints -p`, `list-bindings -p` and `list-spconfig` print
    it, without the clock-driven fields (utilisation, uptime)."""
    out = h.ldm("list-constraints", "-p").stdout + h.ldm("list-bindings", "-p").stdout
    return _VOLATILE.sub("", out) + h.ldm("list-spconfig").stdout


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    return path
