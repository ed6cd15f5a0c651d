"""Network namespaces for end-to-end tests: two namespaces joined by a veth pair, daemons started inside
them, and the link's faults (cut it, slow it down, make it lossy).

`veth_link(prefix)` creates the pair and always removes it (a context manager); it raises `Unavailable`
(callers skip with its reason) when not root, without `ip`, or when the kernel refuses.  Names are unique per
test process (pid, then a counter), so concurrent test runs never collide; addresses need not be unique: each
namespace has its own stack.  Every command runs with a timeout; nothing here touches the host's own network.

Link impairment: `netem` (delay, jitter, loss) where the kernel has `sch_netem`; `tbf` (a token-bucket rate
limit whose short queue drops what overflows it: a slow link that loses packets) as the kernel-only stand-in
where it has not.  `qdisc_support(kind)` says whether a kind can be used, or why not.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.integration.conftest import LDMD, LdmHost

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
_serial = itertools.count(1)


class Unavailable(Exception):
    """Network namespaces cannot be used here (the message says why)."""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)


def tc(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TC, "-n", ns, *args], capture_output=True, text=True, timeout=30)


def require_netns() -> None:
    if os.geteuid() != 0:
        raise Unavailable("creating network namespaces (ip netns) needs root")
    if not os.path.exists(IP):
        raise Unavailable("the `ip` command (iproute2) is not installed")


@dataclass(frozen=True)
class VethLink:
    """Namespace `a` (address `ip_a`, interface `veth_a`) and `b`, joined by one veth pair (a /30)."""

    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str
    veth_a: str
    veth_b: str

    def ends(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return (self.ns_a, self.veth_a), (self.ns_b, self.veth_b)

    def set_up(self, up: bool) -> None:
        """Bring the source side's interface down (the link is cut both ways: its routes go) or up."""
        r = ip("-n", self.ns_a, "link", "set", self.veth_a, "up" if up else "down")
        if r.returncode != 0:
            raise AssertionError(f"ip link set {self.veth_a} {'up' if up else 'down'}: {r.stderr.strip()}")

    def impair(self, *qdisc: str) -> None:
        """Put the root qdisc `qdisc` (e.g. `netem delay 50ms loss 2%`) on both ends."""
        for ns, dev in self.ends():
            r = tc(ns, "qdisc", "replace", "dev", dev, "root", *qdisc)
            if r.returncode != 0:
                raise AssertionError(f"tc qdisc replace dev {dev} root {' '.join(qdisc)}: {r.stderr.strip()}")

    def dropped(self) -> int:
        """Packets the root qdiscs of both ends dropped (a lossy link's losses)."""
        total = 0
        for ns, dev in self.ends():
            out = tc(ns, "-s", "qdisc", "show", "dev", dev, "root").stdout
            total += sum(int(m) for m in re.findall(r"dropped (\d+)", out))
        return total

    def clear(self) -> None:
        """Back to a plain link (no qdisc; errors ignored: there may be none) and up."""
        for ns, dev in self.ends():
            tc(ns, "qdisc", "del", "dev", dev, "root")
        ip("-n", self.ns_a, "link", "set", self.veth_a, "up")


def _tag() -> str:
    # 'g' is no hex digit: pid and counter cannot run into each other (v1a2g3 is pid 0x1a2, link 3)
    return f"{os.getpid():x}g{next(_serial)}"


@contextmanager
def veth_link(prefix: str = "ldm") -> Iterator[VethLink]:
    """Two fresh namespaces joined by a veth pair, removed on exit whatever happened."""
    require_netns()
    tag = _tag()
    link = VethLink(
        ns_a=f"{prefix}-{tag}-a", ns_b=f"{prefix}-{tag}-b", ip_a="10.199.0.1", ip_b="10.199.0.2",
        veth_a=f"v{tag}a", veth_b=f"v{tag}b",
    )  # fmt: skip
    made: list[str] = []
    try:
        for ns in (link.ns_a, link.ns_b):
            r = ip("netns", "add", ns)
            if r.returncode != 0:
                raise Unavailable(f"cannot create network namespace {ns}: {r.stderr.strip()}")
            made.append(ns)
        for cmd in (
            ("link", "add", link.veth_a, "netns", link.ns_a, "type", "veth", "peer", "name", link.veth_b,
             "netns", link.ns_b),
            ("-n", link.ns_a, "addr", "add", f"{link.ip_a}/30", "dev", link.veth_a),
            ("-n", link.ns_b, "addr", "add", f"{link.ip_b}/30", "dev", link.veth_b),
            ("-n", link.ns_a, "link", "set", link.veth_a, "up"),
            ("-n", link.ns_b, "link", "set", link.veth_b, "up"),
            ("-n", link.ns_a, "link", "set", "lo", "up"),
            ("-n", link.ns_b, "link", "set", "lo", "up"),
        ):  # fmt: skip
            r = ip(*cmd)
            if r.returncode != 0:
                raise Unavailable(f"cannot set up the veth link (ip {' '.join(cmd)}): {r.stderr.strip()}")
        yield link
    finally:
        for ns in made:  # deleting a namespace removes its end of the pair, and so the pair
            ip("netns", "del", ns)


def qdisc_support(kind: str, *params: str) -> str | None:
    """None when the kernel takes a `kind` qdisc, else why not (tried on a throw-away namespace's lo)."""
    try:
        require_netns()
    except Unavailable as e:
        return str(e)
    ns = f"ldmq-{_tag()}"
    if ip("netns", "add", ns).returncode != 0:
        return "cannot create a network namespace to try it"
    try:
        r = tc(ns, "qdisc", "add", "dev", "lo", "root", kind, *params)
        if r.returncode == 0:
            return None
        why = r.stderr.strip().splitlines()[0] if r.stderr.strip() else f"tc exited {r.returncode}"
        return f"kernel has no {kind} ({why})"
    finally:
        ip("netns", "del", ns)


def start_in(ns: str, h: LdmHost, listen: str | None = None, env: dict[str, str] | None = None) -> None:
    """Start `h`'s ldmd inside namespace `ns` and wait until it serves.  `listen` creates the host (its first
    start: platform, name, address); without it the home's stored configuration is used (a restart)."""
    argv = [IP, "netns", "exec", ns, LDMD, "--home", str(h.home)]
    if listen is not None:
        argv += ["--platform", h.platform, "--name", h.name, "--listen", listen]
    with open(h.stderr_path, "a") as err:
        h.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, text=True,
            env=None if env is None else {**os.environ, **env},
        )  # fmt: skip
    h.wait_ready()
