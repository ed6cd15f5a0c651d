"""The source engine's data-plane chores: the Prepare offer, the channels PrepareAck asks for, the transfer's
context, the 1.2 shrink to one strand, and failures of the data plane in words an operator can act on.

- `make_offer`: a fresh per-migration secret (it travels only inside the verified TLS control link and is
  never journaled), the channels this side can drive (`live_plan.side_channels`), the frame size and the
  transfer kind.
- `open_plane`: N channel sockets to the data port PrepareAck names, on the address the control link
  reached (`PeerLink.remote_address`), with the data-plane idle deadline; the test hook
  `source:corrupt-frame` puts a relay that flips one byte of channel 0's stream in between.
- `shrink` / `unshrunk`: under the 1.2 rules the domain runs on one strand during the transfer (SPEC 2.2
  phase 2): its bindings keep the first strand; the original strands come back when the source keeps it.
- `plane_failure`: a data-plane error as a `TransferError` naming the peer, the phase and the deadline.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import replace
from typing import Any

from ldoms.migration.channels import DEFAULT_FRAME_BYTES
from ldoms.migration.dataplane_errors import DataPlaneError
from ldoms.migration.dataplane_keys import new_secret
from ldoms.migration.dataplane_link import is_idle_timeout, open_channels
from ldoms.migration.live_plan import TransferKind, primary_caps, side_channels
from ldoms.migration.transfer import TransferError
from ldoms.migration.transport import MigrationPolicy
from ldoms.model.domain import Domain
from ldoms.model.machine import Machine


def make_offer(
    machine: Machine, memory_path: str, size: int, kind: TransferKind
) -> tuple[bytes, dict[str, Any]]:
    """(secret, Prepare.data_plane) for an active domain."""
    secret = new_secret()
    offer: dict[str, Any] = {
        "secret": secret.hex(),
        "channels": side_channels(primary_caps(machine), os.cpu_count() or 1),
        "frame_bytes": DEFAULT_FRAME_BYTES,
        "kind": kind.value,
    }
    return secret, offer


def open_plane(
    ack: dict[str, Any],
    host: str,
    migration_id: str,
    policy: MigrationPolicy,
    *,
    secret: bytes,
) -> list[socket.socket]:
    port, n = ack.get("port"), ack.get("channels")
    if not isinstance(port, int) or not isinstance(n, int) or not 1 <= port <= 65535 or not 1 <= n <= 64:
        raise TransferError(f"the target's data-plane answer is malformed: {ack!r:.200}")
    socks = open_channels(
        host,
        port,
        migration_id,
        n,
        secret=secret,  # keys the channels' preambles: only this source can claim them
        connect_s=policy.connect_s,
        idle_s=policy.transfer_idle_s,
    )
    if policy.hooks.drops("source:corrupt-frame"):
        socks[0] = corrupting_relay(socks[0], offset=4096)
    return socks


def corrupting_relay(sock: socket.socket, *, offset: int) -> socket.socket:
    """Test hook: a socket whose stream reaches `sock` with the byte at `offset` flipped (a frame damaged on
    the wire).  The relay thread ends when either side closes."""
    mine, theirs = socket.socketpair()
    seen = 0

    def pump() -> None:
        nonlocal seen
        try:
            while True:
                data = bytearray(theirs.recv(1 << 16))
                if not data:
                    break
                if seen <= offset < seen + len(data):
                    data[offset - seen] ^= 0xFF
                seen += len(data)
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            theirs.close()

    threading.Thread(target=pump, name="dataplane-corrupting-relay", daemon=True).start()
    return mine


def shrink(dom: Domain) -> Domain:
    """The domain on its first strand only (1.2: the guest gives its other CPUs up by CPU DR)."""
    b = dom.bindings
    if b is None or len(b.strands) <= 1:
        return dom
    return replace(dom, bindings=replace(b, strands=b.strands[:1]))


def unshrunk(dom: Domain, strands: tuple[int, ...]) -> Domain:
    b = dom.bindings
    if b is None or not strands:
        return dom
    return replace(dom, bindings=replace(b, strands=tuple(strands)))


def plane_failure(e: DataPlaneError, *, peer: str, phase: str, round_no: int, idle_s: float) -> TransferError:
    where = f"in phase {phase}, round {round_no}"
    if is_idle_timeout(e.message):
        return TransferError(
            f"The data plane to {peer} made no progress for {idle_s:g} s {where} (deadline transfer_idle_s): "
            f"{e.message}",
            code="dataplane-timeout",
        )
    return TransferError(f"The data plane to {peer} failed {where}: {e.message}", code=e.code)
