"""Load: several live migrations at once between three real hosts, in both directions, while `ldm list`
readers list all three.

Three ldmds on 127.0.0.1 (tests/load/cluster.py), each a trusted peer of the other two.  Guests: active
ledger guests (64M, 8 vCPUs), bound and inactive domains spread over the hosts, and on each host a
"resident" inactive domain that never moves.  Then waves.  In each wave every other domain moves at the
same time: from each host its active guests alternately to the next and to the previous host (so A->B and
B->A run at once, and B->C, C->A ...), its cold domains one host on.  The held guest, whose 64M are all
random (`ldoms-workload=fill-random`: nothing to skip, nothing to compress), moves with them capped at
`bandwidth=16M`, so that it is still migrating when, on purpose:

- a second migration of it is asked for: refused at once with the exact "already being migrated" message
  (the MD lock of a domain already migrating);
- a resident is sent to the held guest's target under the name `primary`: refused by that target's checks,
  while it is busy receiving, with the exact name-in-use lines.

Between waves each host makes a new inactive domain (automatic MAC and all), which joins the rotation: a
host whose domains left hands out MACs again, and they must not collide where those domains went.

Readers (threads running `ldm list`, `ldm list -p` and `ldm list -o status` in turn against each host, a
pause apart) run through every wave.  Checked:

- every migration exits 0 and prints nothing; the arranged refusals fail with their exact lines;
- after each wave every domain is listed exactly once over the three hosts, where it was sent, in its state,
  with no migration flag left; a moved guest's old process is gone and its new one runs;
- every ledger guest verifies (its memory is consistent: no page lost or torn by the moves);
- no leaked binding: each host's free strands, memory, MAUs and console ports are its empty-host figures
  less what the bound and active domains it holds ask for; no guest memory image is left where a guest left;
- every listing exits 0, parses, lists primary, and never shows a name twice on one host nor a name nobody
  made;
- `ldm list-migrations -p` on each host records each migration once (the source's and the target's record
  share its id) with outcome completed, and each name-in-use refusal as failed on its source.

What the load found, each with its regression test at the end of this file: the MAC of a domain that had
left was handed out again by the host it left; a sixth login from one host while five were being checked
was refused as "too many failed logins"; a ninth migration into one host was closed at once (every migration
kept one of the peer port's 8 slots to its end).

    .venv/bin/pytest tests/load/test_three_hosts.py             # the bounded run (CI): about 40 s
    .venv/bin/pytest -m slow tests/load/test_three_hosts.py     # more guests, waves and readers (~2 min)
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from ldoms.cli.client import Client
from ldoms.store.db import MIGRATION_HISTORY
from tests.integration.conftest import DEADLINE_S, LDM, LdmHost, pid_alive, wait_for
from tests.integration.test_live_migration import LEDGER, assert_consistent, control
from tests.integration.test_migrate_e2e import TRAILER, USER
from tests.load.cluster import (
    LISTINGS,
    Cluster,
    Free,
    Guest,
    add_guests,
    domain_records,
    free_resources,
    history,
    in_parallel,
    make_cluster,
    parse_listing,
)

MEMORY_BYTES = 64 << 20  # Guest's default memory
VCPUS = 8  # Guest's default
# A ledger guest dirtying less than LEDGER's 20M/s: six of those would take a third of a core meanwhile.
LOAD_LEDGER = tuple({**LEDGER, "ldoms-dirty-rate": "4M"}.items())
HELD = (("ldoms-workload", "fill-random"), ("ldoms-working-set", "64M"))
HOLD_BANDWIDTH = "bandwidth=16M"  # the held guest's 64M at 16M/s: 4 s of pre-copy, time for the refusals
SETTLED_FLAGS = {"active": "-n----", "bound": "------", "inactive": ""}  # `ldm list -p`: no migration flag
READER_PAUSE_S = 0.4  # an `ldm` run costs about a fifth of a core-second (its interpreter's start)


@dataclass
class Dom:
    name: str
    state: str  # "active", "bound" or "inactive"
    host: str
    pid: int = 0  # the guest process (active)

    @property
    def resident(self) -> bool:
        return self.name.startswith("r")

    @property
    def held(self) -> bool:
        """The guest whose migration is capped (its memory is random: the cap holds it for seconds)."""
        return self.name.startswith("f")


@dataclass(frozen=True)
class Move:
    name: str
    src: str
    dst: str
    props: tuple[str, ...] = ()


@dataclass
class Readers:
    """Threads listing every host until stopped (each bounded in count and time)."""

    cluster: Cluster
    known: set[str]  # every name a listing may show (grows as domains are made: under `lock`)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def run(self, k: int, max_listings: int, deadline: float) -> None:
        """Reader `k`: one listing after another, READER_PAUSE_S apart."""
        hosts = list(self.cluster.hosts.values())
        kinds = list(LISTINGS)
        for i in range(k, k + max_listings):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            h, kind = hosts[i % len(hosts)], kinds[(i // len(hosts)) % len(kinds)]
            try:
                r = subprocess.run([LDM, "--home", str(h.home), *LISTINGS[kind]], capture_output=True,
                                   text=True, timeout=DEADLINE_S)  # fmt: skip
                if r.returncode != 0:
                    raise AssertionError(f"exited {r.returncode}: {r.stderr.strip()}")
                names = parse_listing(kind, r.stdout)
                with self.lock:
                    known = set(self.known)  # after the listing: a name is known before it is made
                unknown = set(names) - known
                if unknown:
                    raise AssertionError(f"lists domains nobody made: {sorted(unknown)}")
                if "primary" not in names:
                    raise AssertionError("does not list primary")
            except Exception as e:  # collected: one bad listing must not stop the others
                with self.lock:
                    self.errors.append(f"ldm {kind} on {h.name}: {e}")
            else:
                with self.lock:
                    self.counts[kind] += 1
            self.stop.wait(READER_PAUSE_S)


class ThreeHostLoad:
    def __init__(self, cluster: Cluster, doms: list[Dom], base: dict[str, Free], xml_dir: Path) -> None:
        self.c = cluster
        self.doms = {d.name: d for d in doms}
        self.base = base  # each host's free resources with no guest
        self.xml_dir = xml_dir
        self.readers = Readers(cluster, {"primary", *self.doms})
        self.completed: list[Move] = []
        self.refused: list[Move] = []  # refused by the target's checks (recorded as failed)
        self.names = list(cluster.hosts)
        self.t0 = time.monotonic()

    def log(self, what: str) -> None:
        """Where the time goes (shown with `pytest -s`)."""
        print(f"{time.monotonic() - self.t0:7.2f} s  {what}", flush=True)

    # ------------------------------------------------------------------ planning
    def plan(self, wave: int) -> list[Move]:
        """Every domain but the residents moves: from each host, active guests alternately to the next and
        the previous host (both directions of every pair at once), cold domains one host on; the held
        guest's move is capped."""
        moves = []
        n = len(self.names)
        for k, hname in enumerate(self.names):
            here = sorted((d for d in self.doms.values() if d.host == hname), key=lambda d: d.name)
            active = [d for d in here if d.state == "active"]
            for j, d in enumerate(active):
                moves.append(Move(d.name, hname, self.names[(k + 1 + (j + wave) % 2 * (n - 2)) % n]))
            for d in here:
                if d.state != "active" and not d.resident:
                    moves.append(Move(d.name, hname, self.names[(k + 1) % n]))
        (i,) = (i for i, m in enumerate(moves) if self.doms[m.name].held)
        moves[i] = replace(moves[i], props=(HOLD_BANDWIDTH,))
        return moves

    # ------------------------------------------------------------------ a wave
    def wave(self, wave: int) -> None:
        moves = self.plan(wave)
        held = next(m for m in moves if m.props)
        with ThreadPoolExecutor(max_workers=len(moves)) as pool:
            futures: dict[Future[subprocess.CompletedProcess[str]], Move] = {
                pool.submit(self.c.migrate, m.src, m.name, m.dst, *m.props): m for m in moves
            }
            try:
                self.arranged_refusals(held)
            finally:
                results = {futures[f]: f.result() for f in futures}
        self.log(f"wave {wave}: {len(moves)} migrations done")
        for m, r in results.items():
            assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (wave, m, r.stderr)
            self.completed.append(m)
            self.doms[m.name].host = m.dst
        self.check_wave(wave)
        self.log(f"wave {wave}: checked")

    def arranged_refusals(self, held: Move) -> None:
        src = self.c.hosts[held.src]

        def migrating() -> bool:
            return any(s.domain == held.name for s in Client(src.home).view().migrations)

        wait_for(f"the migration of {held.name} to start", migrating)
        other = next(n for n in self.names if n not in (held.src, held.dst))
        r = self.c.migrate(held.src, held.name, other)
        # The MD lock of a domain already migrating: refused by the source before anything starts.
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "",
            f"LDom {held.name} is already being migrated (migration to {held.dst} in progress): only one "
            "migration of a domain at a time\n",
        ), r.stderr  # fmt: skip
        assert migrating(), f"{held.name} finished before its second migration was refused: cap it lower"
        # The target's checks while it receives: a name in use there.
        sender = f"r{other[-1]}"
        r = self.c.hosts[other].ldm(
            "migrate-domain", "-p", str(self.c.pwfile), sender, f"{USER}@{held.dst}:primary", ok=False
        )
        assert (r.returncode, r.stdout) == (1, ""), r.stderr
        assert r.stderr.splitlines() == [
            f"LDom primary already exists on {held.dst}: the migrated domain needs an unused name",
            TRAILER.format(sender),
        ], r.stderr
        self.refused.append(Move(sender, other, held.dst))

    # ------------------------------------------------------------------ checks
    def check_wave(self, wave: int) -> None:
        listings = dict(zip(self.names, in_parallel(lambda h: h.ldm("list", "-p").stdout,
                                                    self.c.hosts.values()), strict=True))  # fmt: skip
        placement: dict[str, list[str]] = {}
        for hname, text in listings.items():
            records = domain_records(text)
            parse_listing("list -p", text)  # each name once
            for name, rec in records.items():
                if name == "primary":
                    continue
                placement.setdefault(name, []).append(hname)
                d = self.doms.get(name)
                want = (d.state, SETTLED_FLAGS[d.state]) if d is not None else None
                assert (rec["state"], rec["flags"]) == want, f"wave {wave}, {hname}: {name} is {rec}"
        expected = {name: [d.host] for name, d in self.doms.items()}
        assert placement == expected, f"wave {wave}: domains are not each on one host, as sent"
        in_parallel(self.check_guest, [d for d in self.doms.values() if d.state == "active"])
        self.check_held()
        for hname, h in self.c.hosts.items():
            held = [d for d in self.doms.values() if d.host == hname and d.state != "inactive"]
            n = len(held)
            want = self.base[hname].minus(strands=VCPUS * n, memory=MEMORY_BYTES * n, ports=n)
            assert free_resources(h, listings[hname]) == want, f"wave {wave}, {hname} holds {held}"
            active = {d.name for d in held if d.state == "active"}
            try:
                wait_for(f"no guest image left on {hname} but its active guests'",
                         lambda h=h, active=active: _images(h) == active)  # fmt: skip
            except AssertionError as e:
                raise AssertionError(f"wave {wave}: {e}: {sorted(_images(h))}, not {sorted(active)}") from e

    def check_guest(self, d: Dom) -> None:
        h = self.c.hosts[d.host]
        pid = h.guest_pid(d.name)
        assert pid is not None and pid_alive(pid), f"the guest of {d.name} does not run on {d.host}"
        if d.pid:
            assert pid != d.pid and not pid_alive(d.pid), f"{d.name}'s old guest process {d.pid} still runs"
        d.pid = pid
        if not d.held:
            assert_consistent(h, d.name)

    def check_held(self) -> None:
        """The held guest is no ledger: its memory survives whole if it still holds what it filled (the
        filled count travels with the workload's state, so a lost page would not show here; the ledgers
        prove that)."""
        (d,) = (d for d in self.doms.values() if d.held)
        ws = control(self.c.hosts[d.host], d.name).status()["workload_status"]
        assert ws["done"], ws

    def check_history(self) -> None:
        want: dict[str, Counter[tuple[str, str, str, str]]] = {n: Counter() for n in self.names}
        for m in self.completed:
            want[m.src][(m.name, "source", m.dst, "completed")] += 1
            want[m.dst][(m.name, "target", m.src, "completed")] += 1
        for m in self.refused:
            want[m.src][(m.name, "source", m.dst, "failed")] += 1
        ids: Counter[str] = Counter()
        for hname, h in self.c.hosts.items():
            assert want[hname].total() <= MIGRATION_HISTORY, "more than a history keeps: make fewer waves"
            records = history(h)
            got = Counter((r["domain"], r["role"], r["peer"], r["outcome"]) for r in records)
            extra, missing = got - want[hname], want[hname] - got
            assert got == want[hname], f"{hname}'s list-migrations: unexpected {extra}, missing {missing}"
            assert len({r["id"] for r in records}) == len(records), f"{hname}: a migration recorded twice"
            ids.update(r["id"] for r in records if r["outcome"] == "completed")
        assert set(ids.values()) == {2}, "a completed migration is not recorded by both its hosts"
        assert len(ids) == len(self.completed)

    # ------------------------------------------------------------------ between waves
    def churn(self, wave: int) -> None:
        """A new inactive domain on each host: automatic MACs handed out after domains left."""
        made = [Dom(f"n{wave}{hname[-1]}", "inactive", hname) for hname in self.names]
        with self.readers.lock:
            self.readers.known.update(d.name for d in made)
        in_parallel(lambda d: add_guests(self.c.hosts[d.host], [Guest(d.name, "inactive")], self.xml_dir),
                    made)  # fmt: skip
        self.doms.update((d.name, d) for d in made)

    # ------------------------------------------------------------------ the run
    def run(self, waves: int, readers: int, churn: int) -> None:
        """`waves` waves, new domains made after each of the first `churn`, `readers` readers throughout."""
        deadline = time.monotonic() + 900
        threads = [
            threading.Thread(target=self.readers.run, args=(k, 10_000, deadline), daemon=True)
            for k in range(readers)
        ]
        for t in threads:
            t.start()
        try:
            for w in range(waves):
                self.wave(w)
                if w < min(churn, waves - 1):
                    self.churn(w)
        finally:
            self.readers.stop.set()
            for t in threads:
                t.join(DEADLINE_S)
        assert not any(t.is_alive() for t in threads), "a reader did not stop"
        assert not self.readers.errors, self.readers.errors[:10]
        self.check_history()
        for h in self.c.hosts.values():
            assert h.proc is not None and h.proc.poll() is None, f"{h.name}'s ldmd exited"
        self.log(f"listings: {dict(self.readers.counts)}")


def _images(h: LdmHost) -> set[str]:
    """The guest memory images in the host's guests directory: NAME for NAME.mem, the whole file name for
    anything else holding `.mem` (a hidden image being scrubbed, an incoming one)."""
    out = set()
    for p in (h.home / "guests").iterdir():
        if p.name.endswith(".mem") and not p.name.startswith("."):
            out.add(p.name.removesuffix(".mem"))
        elif ".mem" in p.name:
            out.add(p.name)
    return out


def setup(
    hosts: Callable[..., LdmHost], tmp_path: Path, *, active_per_host: int, bound: int, inactive: int
) -> ThreeHostLoad:
    c = make_cluster(hosts, tmp_path)
    names = list(c.hosts)
    base = dict(zip(names, in_parallel(free_resources, c.hosts.values()), strict=True))
    doms: list[Dom] = []
    for hname in names:
        doms.append(Dom(f"r{hname[-1]}", "inactive", hname))  # the resident: never moves
        doms += [Dom(f"g{hname[-1]}{j}", "active", hname) for j in range(active_per_host)]
    doms.append(Dom("f0", "active", names[0]))
    doms += [Dom(f"b{j}", "bound", names[j % len(names)]) for j in range(bound)]
    doms += [Dom(f"i{j}", "inactive", names[(j + 2) % len(names)]) for j in range(inactive)]

    def guest(d: Dom) -> Guest:
        if d.state != "active":
            return Guest(d.name, d.state)
        return Guest(d.name, d.state, variables=HELD if d.held else LOAD_LEDGER)

    def make(hname: str) -> None:
        add_guests(c.hosts[hname], [guest(d) for d in doms if d.host == hname], tmp_path)

    in_parallel(make, names)
    for d in doms:
        if d.state == "active":
            d.pid = c.hosts[d.host].guest_pid(d.name) or 0
    held = next(d for d in doms if d.held)
    wait_for("the held guest's memory filled",
             lambda: control(c.hosts[held.host], held.name).status()["workload_status"]["done"])  # fmt: skip
    return ThreeHostLoad(c, doms, base, tmp_path)


def test_concurrent_migrations_between_three_hosts(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    """The bounded run (CI): 6 ledger guests and the held one, a bound and an inactive domain, 3 waves of 9,
    12 and 15 migrations at once, 3 readers."""
    t0 = time.monotonic()
    load = setup(hosts, tmp_path, active_per_host=2, bound=1, inactive=1)
    load.log(f"set up in {time.monotonic() - t0:.2f} s")
    load.run(waves=3, readers=3, churn=2)
    assert len(load.completed) == 9 + 12 + 15 and len(load.refused) == 3
    assert sum(load.readers.counts.values()) >= 9


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_concurrent_migrations_between_three_hosts_long(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    """The long run: 9 ledger guests and the held one, 2 bound and an inactive domain, 6 waves of 13 to 22
    migrations at once (114 in all: each host's history keeps them all), 6 readers."""
    load = setup(hosts, tmp_path, active_per_host=3, bound=2, inactive=1)
    load.run(waves=6, readers=6, churn=3)
    assert len(load.completed) == 13 + 16 + 19 + 22 * 3 and len(load.refused) == 6


# ------------------------------------------------------------------------------- what the load found
def _mac(h: LdmHost, name: str) -> str:
    out = h.ldm("list-constraints", "-p", name).stdout
    return next(ln.split("mac-addr=", 1)[1] for ln in out.splitlines() if ln.startswith("MAC|"))


def test_a_mac_that_left_is_not_handed_out_again(hosts: Callable[..., LdmHost], tmp_path: Path) -> None:
    """The load found it: ha made a domain after another had migrated to hb and gave it the departed one's
    MAC, so the new domain's own migration to hb was refused ("MAC address ... is already used by LDom ...
    on hb").  A host remembers the MACs of the domains that left it, also across a restart."""
    c = make_cluster(hosts, tmp_path, names=("ha", "hb"))
    ha = c.hosts["ha"]
    add_guests(ha, [Guest("x", "inactive")], tmp_path)
    x_mac = _mac(ha, "x")
    r = c.migrate("ha", "x", "hb")
    assert (r.returncode, r.stderr) == (0, "")
    add_guests(ha, [Guest("y", "inactive")], tmp_path)
    assert _mac(ha, "y") != x_mac
    r = c.migrate("ha", "y", "hb")
    assert (r.returncode, r.stderr) == (0, "")
    ha.term()
    ha.start_ldmd(first=False)
    add_guests(ha, [Guest("z", "inactive")], tmp_path)
    assert _mac(ha, "z") not in (x_mac, _mac(c.hosts["hb"], "y"))


def test_many_migrations_from_one_host_to_another_at_once(
    hosts: Callable[..., LdmHost], tmp_path: Path
) -> None:
    """The load found two limits on what a host receives at once: each login on the peer port counted as a
    failure until it succeeded, so a sixth migration logging in while five were from the same host was
    refused ("too many failed logins from this address ..."), though none had failed; and each migration
    held one of the peer port's 8 slots to its end, so a ninth was closed at once ("closed the connection in
    the TLS handshake ... it may be at its connection limit").  Twelve at once."""
    c = make_cluster(hosts, tmp_path, names=("ha", "hb"))
    names = [f"m{i}" for i in range(12)]
    add_guests(c.hosts["ha"], [Guest(n, "inactive") for n in names], tmp_path)
    results = in_parallel(lambda n: c.migrate("ha", n, "hb"), names)
    assert [(r.returncode, r.stderr) for r in results] == [(0, "")] * len(names)
    assert sorted(domain_records(c.hosts["hb"].ldm("list", "-p").stdout)) == sorted(["primary", *names])
