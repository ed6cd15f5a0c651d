"""Three (or N) real ldmd hosts on 127.0.0.1 that may all migrate to one another, for the load suite and
bench/bench_load.py.

`make_cluster` generalises `make_pair` (tests/integration/test_migrate_e2e.py) to N hosts: every host gets
the same user and password, pins every other host as a trusted peer under its host name, and is set up the
LDoms way (`make_room`: primary shrunk to 8 vCPUs and 4G, a vcc with a port range).  Hosts are started and
set up in parallel (one thread per host: they share nothing).

`add_guests` makes guests as `add_guest` does, in fewer `ldm` runs (one `add-domain -i` per host).

Also here, what the load test and the benchmark both read:

- `parse_listing(kind, text)`: the domain names of `ldm list`, `ldm list -p` or `ldm list -o status` (human),
  each checked well formed; a name twice is a `ListingError`.
- `free_resources(host)`: free strands, memory bytes, MAUs and vcc ports, from `ldm list-devices -p` and
  the console ports `ldm list -p` shows held (what a leaked binding would change).
- `history(host)`: the records of `ldm list-migrations -p`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ldoms.model.domain import DomainConfig
from ldoms.model.xmlio import constraints_to_xml
from ldoms.units import parse_size
from tests.integration.conftest import LdmHost
from tests.integration.test_migrate_e2e import PASSWORD, USER, fingerprint, make_room
from tests.load.bighost import ListingError, list_states

T = TypeVar("T")
R = TypeVar("R")


def in_parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`fn` on every item at once (one thread each), results in order; the first failure is raised."""
    todo = list(items)
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        return list(pool.map(fn, todo))


@dataclass
class Cluster:
    hosts: dict[str, LdmHost]  # host name (as peers know it) -> host
    pwfile: Path  # the password of USER on every host, mode 0600

    def migrate(self, src: str, name: str, dst: str, *props: str) -> subprocess.CompletedProcess[str]:
        """`ldm migrate-domain [props] NAME USER@DST` on `src`, not checked."""
        return self.hosts[src].ldm(
            "migrate-domain", "-p", str(self.pwfile), *props, name, f"{USER}@{dst}", ok=False
        )

    def placement(self) -> dict[str, list[str]]:
        """Domain name -> the hosts whose `ldm list -p` shows it (primary left out)."""
        out: dict[str, list[str]] = {}
        for hname, h in self.hosts.items():
            for name in list_states(h.ldm("list", "-p").stdout, True):
                if name != "primary":
                    out.setdefault(name, []).append(hname)
        return out


def make_cluster(
    hosts: Callable[..., LdmHost], tmp_path: Path, names: Sequence[str] = ("ha", "hb", "hc")
) -> Cluster:
    """N hosts, each a trusted peer of every other with USER/PASSWORD, each with room for guests."""
    made = {name: hosts(name) for name in names}
    for h in made.values():
        h.start_ldmd(wait=False)
    for h in made.values():
        h.wait_ready()
    pwfile = tmp_path / "password"
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(0o600)
    pins = {name: fingerprint(h) for name, h in made.items()}

    def setup(h: LdmHost) -> None:
        r = h.run_ldmd("user", "add", USER, "--password-file", str(pwfile))
        assert r.returncode == 0, r.stderr
        for other, o in made.items():
            if o is not h:
                r = h.run_ldmd("peer", "add", other, f"127.0.0.1:{o.port}", "--fingerprint", pins[other])
                assert r.returncode == 0, r.stderr
        make_room(h)

    in_parallel(setup, made.values())
    return Cluster(hosts=made, pwfile=pwfile)


# ------------------------------------------------------------------------------------------- guests
@dataclass(frozen=True)
class Guest:
    name: str
    state: str = "active"  # "active", "bound" or "inactive"
    vcpus: int = 8  # add_guest's: a whole core, also after a 1.2-style migration
    memory: str = "64M"
    variables: tuple[tuple[str, str], ...] = ()


def add_guests(h: LdmHost, guests: Sequence[Guest], xml_dir: Path) -> None:
    """Make `guests` on `h` the way `add_guest` (test_migrate_e2e) does, in fewer `ldm` runs: one
    `add-domain -i` of their constraints (identity left to ldmd: automatic MACs), a bind each, one start."""
    if not guests:
        return
    configs = [
        DomainConfig(name=g.name, uuid="", hostid=0, mac=0, vcpus=g.vcpus, memory=parse_size(g.memory),
                     variables=g.variables)
        for g in guests
    ]  # fmt: skip
    path = xml_dir / f"{h.name}-{guests[0].name}.xml"
    path.write_text(constraints_to_xml(configs))
    h.ldm("add-domain", "-i", str(path))
    for g in guests:
        if g.state in ("bound", "active"):
            h.ldm("bind-domain", g.name)
    active = [g.name for g in guests if g.state == "active"]
    if active:
        h.ldm("start-domain", *active)


# ------------------------------------------------------------------------------------------- listings
LISTINGS: dict[str, tuple[str, ...]] = {
    "list": ("list",),
    "list -p": ("list", "-p"),
    "list -o status": ("list", "-o", "status"),
}
HUMAN_STATES = ("active", "bound", "inactive", "suspended")
_STATUS_ROW = re.compile(r"^    migration\s+\d{1,3}%\s+\S+$")


def parse_listing(kind: str, text: str) -> list[str]:
    """The domain names a listing of `kind` (a key of LISTINGS) shows, in order; raise ListingError when it
    is malformed or shows a name twice."""
    if kind == "list -p":
        return list(list_states(text, True))
    if kind == "list":
        return _human_names(text)
    # `ldm list -o status`: per domain "NAME" / the name, then a STATUS block while it migrates.
    names: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line == "NAME":
            if i + 1 >= len(lines) or not re.fullmatch(r"[A-Za-z][\w.+-]*", lines[i + 1]):
                raise ListingError(f"ldm list -o status: a NAME without a name: {lines[i : i + 2]!r}")
            names.append(lines[i + 1])
            i += 2
        elif line == "STATUS":
            rows = lines[i + 1 : i + 3]
            if len(rows) != 2 or not rows[0].split()[:2] == ["OPERATION", "PROGRESS"]:
                raise ListingError(f"ldm list -o status: a malformed STATUS block: {rows!r}")
            if not _STATUS_ROW.match(rows[1]):
                raise ListingError(f"ldm list -o status: a malformed status row: {rows[1]!r}")
            i += 3
        elif line.strip() == "" or set(line) == {"-"}:
            i += 1
        else:
            raise ListingError(f"ldm list -o status: an unexpected line: {line!r}")
    if len(names) != len(set(names)):
        raise ListingError(f"ldm list -o status lists names more than once: {names}")
    return names


def _human_names(text: str) -> list[str]:
    """`ldm list`: the header, then one row per domain whose second word is its state (`suspended` while
    its final copy runs)."""
    lines = text.splitlines()
    if not lines or lines[0].split()[:3] != ["NAME", "STATE", "FLAGS"]:
        raise ListingError(f"ldm list printed no header: {text[:200]!r}")
    names = []
    for line in lines[1:]:
        words = line.split()
        if len(words) < 2 or words[1] not in HUMAN_STATES:
            raise ListingError(f"an ldm list line without a state: {line!r}")
        names.append(words[0])
    if len(names) != len(set(names)):
        raise ListingError(f"ldm list lists names more than once: {names}")
    return names


# ------------------------------------------------------------------------------------------- resources
VCC_PORTS = 101  # make_room's primary-vcc0: port-range=5000-5100


@dataclass(frozen=True)
class Free:
    strands: int
    memory: int  # bytes
    maus: int
    ports: int  # free console ports of the host's vcc services

    def minus(self, strands: int = 0, memory: int = 0, maus: int = 0, ports: int = 0) -> Free:
        return Free(self.strands - strands, self.memory - memory, self.maus - maus, self.ports - ports)


def _records(text: str, kind: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith(kind + "|"):
            out.append(dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv))
    return out


def domain_records(listing: str) -> dict[str, dict[str, str]]:
    """name -> the DOMAIN record of an `ldm list -p` output."""
    return {r["name"]: r for r in _records(listing, "DOMAIN")}


def free_resources(h: LdmHost, listing: str | None = None) -> Free:
    """What is free on `h`: strands, memory and MAUs from `ldm list-devices -p` (a strand held back after a
    1.2 migration is listed 0 % free), console ports from the vcc's range less the ports of the domains in
    `listing` (`ldm list -p`, run if not given)."""
    section = ""
    strands = memory = maus = 0
    for line in h.ldm("list-devices", "-p").stdout.splitlines():
        if not line.startswith("|"):
            section = line.strip()
            continue
        rec = dict(kv.split("=", 1) for kv in line.split("|")[1:] if "=" in kv)
        if section == "VCPU" and rec.get("free") == "100":
            strands += 1
        elif section == "MAU":
            maus += 1
        elif section == "MEMORY":
            memory += int(rec["size"])
    records = domain_records(listing if listing is not None else h.ldm("list", "-p").stdout)
    ports = [r["cons"] for r in records.values() if r.get("cons", "").isdigit()]
    if len(ports) != len(set(ports)):
        raise AssertionError(f"{h.name}: a console port is held twice: {sorted(ports)}")
    return Free(strands, memory, maus, VCC_PORTS - len(ports))


def history(h: LdmHost) -> list[dict[str, str]]:
    """The MIGRATION records of `ldm list-migrations -p`."""
    return _records(h.ldm("list-migrations", "-p").stdout, "MIGRATION")
