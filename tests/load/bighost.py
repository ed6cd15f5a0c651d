"""A host with hundreds of domains, made fast, for the load suite and bench/bench_listing.py.

Creating 400 domains through `ldm` would take minutes (an interpreter start and a store commit each) and
measure nothing of interest, so the population is built in this process with the same operations ldmd runs
(`ldoms.ops.base.run`, after `parse_args`, as `ldm` would have parsed each command line), written to the
home's state database with `Store.create_host`, and only then served by a real `ldmd`.  Guests are then
started through `ldm`: only ldmd starts guest processes.

The platform is a custom TOML file (`write_platform`): 4 sockets x 16 cores x 8 strands (512 strands, 64
MAUs) and 128G, so that a few hundred domains of one strand and 256M each can be bound at once.

Listings are parsed here too (`list_states`): `ldm list` (human) and `ldm list -p` give, per domain, its name
and state; both are checked to hold each name once.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ldoms.binding import factory_default
from ldoms.cli.parse import parse_args
from ldoms.daemon.home import Home
from ldoms.daemon.sockpath import connect_unix
from ldoms.model.machine import Machine
from ldoms.model.platforms import load_platform
from ldoms.ops.base import OpContext, lookup, run
from ldoms.store import Store

PLATFORM_TOML = """\
# A large host for the load suite: 4 x UltraSPARC T2 Plus, 16 cores x 8 strands each, 128G.
model = "Load Test 4-socket"

[cpu]
type = "UltraSPARC T2 Plus"
mhz = 1415
sockets = 4
cores_per_socket = 16
strands_per_core = 8

[memory]
hw_max_pagesize = "256M"

[[memory.range]]
pa = 0x0
size = "64M"
reserved = true

[[memory.range]]
pa = 0x4000000
size = "131008M"

[[pci]]
dev = "pci@400"
pseudonym = "bus_a"

[mac]
base = "00:14:4f:f8:00:00"
"""

SETUP = (
    ("set-crypto", "1", "primary"),
    ("set-vcpu", "8", "primary"),
    ("set-memory", "8G", "primary"),
    ("stop-domain", "primary"),  # the control domain's reboot applies the delayed reconfiguration
    ("add-vcc", "port-range=5000-5999", "primary-vcc0", "primary"),
    ("add-vds", "primary-vds0", "primary"),
    ("add-vsw", "net-dev=eth0", "primary-vsw0", "primary"),
)
GUEST_MEMORY = "256M"


def write_platform(directory: Path) -> Path:
    path = directory / "loadhost.toml"
    path.write_text(PLATFORM_TOML)
    return path


def ldm_in_model(machine: Machine, argv: Sequence[str], ctx: OpContext) -> Machine:
    """One `ldm` command line applied in process (what ldmd would commit)."""
    return run(machine, parse_args(lookup(argv[0]).spec, list(argv[1:])), ctx).machine


def build_machine(
    platform_file: Path, host_name: str, *, inactive: Iterable[str], bound: Iterable[str], seed: int = 1
) -> Machine:
    """The host after SETUP, then `inactive` domains (1 vCPU, 256M, not bound) and `bound` ones."""
    now = time.time()
    ctx = OpContext(now=now, random_seed=seed)
    m = factory_default(load_platform(str(platform_file)), host_name, seed=seed)
    # The control domain's uptime counts from the host's creation, as ldmd does at a first start.
    m = replace(m, domains=(replace(m.control, started_at=now), *m.domains[1:]))
    for argv in SETUP:
        m = ldm_in_model(m, argv, ctx)
    for name, bind in [(n, False) for n in inactive] + [(n, True) for n in bound]:
        m = ldm_in_model(m, ("add-domain", name), ctx)
        m = ldm_in_model(m, ("add-vcpu", "1", name), ctx)
        m = ldm_in_model(m, ("add-memory", GUEST_MEMORY, name), ctx)
        if bind:
            m = ldm_in_model(m, ("bind-domain", name), ctx)
    return m


def seed_home(home: Path, machine: Machine, *, listen: str) -> None:
    """Write `machine` as the state of a new home (before any ldmd serves it)."""
    h = Home(home)
    h.prepare()
    store = Store(h.db)
    try:
        store.create_host(machine, listen=listen)
    finally:
        store.close()


# ------------------------------------------------------------------------------------------- the API
class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, sock_path: Path, timeout: float) -> None:
        super().__init__("ldmd", timeout=timeout)
        self._sock_path = sock_path

    def connect(self) -> None:
        self.sock = connect_unix(self._sock_path, timeout=self.timeout)


def api(
    home: Path, method: str, path: str, body: object = None, *, timeout: float = 30.0
) -> tuple[int, bytes]:
    """One request to ldmd's local API on the home's socket (a new connection, as ldm makes): status, body."""
    conn = _UnixConnection(home / "ldmd.sock", timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def api_op(home: Path, *argv: str) -> tuple[int, bytes]:
    """POST /v1/ops with one command line, parsed as ldm parses it."""
    req = parse_args(lookup(argv[0]).spec, list(argv[1:]))
    body = {
        "verb": req.verb,
        "flags": req.flags,
        "props": [list(p) for p in req.props],
        "operands": list(req.operands),
    }
    return api(home, "POST", "/v1/ops", body)


# ------------------------------------------------------------------------------------------- listings
_HUMAN_STATES = ("active", "bound", "inactive")


class ListingError(AssertionError):
    pass


def list_states(text: str, parseable: bool) -> dict[str, str]:
    """name -> state from the output of `ldm list` (parseable: `ldm list -p`); each name exactly once."""
    out: dict[str, str] = {}
    names: list[str] = []
    if parseable:
        for line in text.splitlines():
            if not line.startswith("DOMAIN|"):
                continue
            fields = dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv)
            if "name" not in fields or "state" not in fields:
                raise ListingError(f"a DOMAIN record without name or state: {line!r}")
            names.append(fields["name"])
            out[fields["name"]] = fields["state"]
    else:
        lines = text.splitlines()
        if not lines or not lines[0].startswith("NAME"):
            raise ListingError(f"ldm list printed no header: {text[:200]!r}")
        for line in lines[1:]:
            words = line.split()
            if len(words) < 2 or words[1] not in _HUMAN_STATES:
                raise ListingError(f"an ldm list line without a state: {line!r}")
            names.append(words[0])
            out[words[0]] = words[1]
    if len(names) != len(out):
        dups = sorted({n for n in names if names.count(n) > 1})
        raise ListingError(f"names listed more than once: {dups}")
    return out


def guest_pid(home: Path, domain: str) -> int | None:
    try:
        text = (home / "guests" / f"{domain}.pid").read_text()
    except FileNotFoundError:
        return None
    m = re.search(r'"pid": (\d+)', text)
    return int(m.group(1)) if m else None


def view_states(view_json: bytes | str) -> dict[str, str]:
    """name -> state from a GET /v1/view answer."""
    doc = json.loads(view_json)
    return {d["config"]["name"]: d["state"] for d in doc["machine"]["domains"]}
