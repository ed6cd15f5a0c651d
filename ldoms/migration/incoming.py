"""The target's side of an active domain's transfer: its image receiver, its standby guest, its start, and
what happens to both when the migration is kept or discarded.

Theory of operation.  At Prepare the target engine hands the source's offer to `IncomingActive.prepare`:
with a data-plane offer the image is created where the guest will run it (`GuestLike.memory_path`) and fed
by a `live_target.DataPlaneImage`; without one, the issue-3 staging image takes inline pages
(`ControlLinkImage`).  After PrepareAck, `started()` accepts the data channels in a background thread (a
Cancel or a lost control link meanwhile aborts it) and, for the data plane, starts the *standby* guest in
another: it maps the image early and waits suspended, so the interpreter's start-up is not part of the
pause.  FinalState is verified by the receiver (accounting, goodbye, fdatasync) and the standby guest must
be up before the journal may say "complete domain held"; at CommitRequest `start(cpu_state)` hands the
guest its state (`restore`) and returns the downtime it measured.  The issue-3 path starts the guest from
the staging image instead.

`discard()` stops the receiver first (nothing writes any more), takes the image away for scrubbing
(`live_target.scrub`: renamed now, freed in the background), then stops the guest: no lock is held while
gigabytes are freed, and no page of the domain stays behind.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldoms.errors import LdmError
from ldoms.migration.engine_common import EngineDeps
from ldoms.migration.events import FinalState, MemPages, Prepare, RoundDone
from ldoms.migration.live_plan import primary_caps
from ldoms.migration.live_target import ControlLinkImage, DataPlaneImage, ImageReceiver, scrub, set_aside
from ldoms.migration.transfer import TransferError
from ldoms.model.domain import Domain
from ldoms.units import PAGE_SIZE

log = logging.getLogger("ldmd.migration.target")

STANDBY_WAIT_S = 30.0  # how long FinalState waits for a standby guest still starting


class IncomingActive:
    def __init__(self, deps: EngineDeps, name: str, migration_id: str) -> None:
        self.deps = deps
        self.name = name
        self.migration_id = migration_id
        self.receiver: ImageReceiver | None = None
        self.data_plane = False
        self.started = False  # the guest runs the domain (restored, or started from the image)
        self.standby_started = False
        self.downtime_s: float | None = None
        self._threads: list[threading.Thread] = []
        self._accept_error: BaseException | None = None
        self._standby_error: BaseException | None = None
        self._standby_done = threading.Event()
        self._stop = threading.Event()
        self._wake: Callable[[], None] | None = None

    @property
    def image_path(self) -> Path:
        if self.data_plane:
            return self.deps.guests.memory_path(self.name)
        return self.deps.journals.image_path(self.migration_id)

    @property
    def bytes_received(self) -> int:
        """Page bytes that arrived (the target's side of the record's bytes)."""
        if isinstance(self.receiver, DataPlaneImage):
            return self.receiver.transcript.pages * PAGE_SIZE
        return 0

    @property
    def channels(self) -> int:
        return int(self.receiver.ack.get("channels", 0)) if self.receiver is not None else 0

    # ------------------------------------------------------------------ phase 2
    def prepare(
        self, ev: Prepare, shell: Domain, bind_host: str, wake: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Create the image and its receiver; the data-plane answer for PrepareAck."""
        assert shell.bindings is not None
        blocks = [(b.ra, b.size) for b in shell.bindings.mblocks]
        offer = dict(ev.data_plane)
        machine = self.deps.host.machine
        self.data_plane = bool(offer.get("secret"))
        path = self.image_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a leftover of a crashed attempt cannot be ours (the name was free)
        if not self.data_plane:
            self.receiver = ControlLinkImage(path, blocks)
            return {}
        policy = self.deps.policy
        self.receiver = DataPlaneImage(
            path=path,
            size=sum(size for _, size in blocks),
            offer=offer,
            migration_id=self.migration_id,
            bind_host=bind_host,
            host=machine.host_name,
            primary=primary_caps(machine),
            cores=os.cpu_count() or 1,
            idle_s=policy.transfer_idle_s,
            accept_s=policy.prepare_s,
            before_receive=lambda: policy.hooks.at("target:receiver", self._stop),
            on_error=wake,
        )
        self._wake = wake
        self._spawn("standby", self._start_standby, shell)
        return dict(self.receiver.ack)

    def started_link(self) -> None:
        """PrepareAck is out: take the data channels in the background."""
        if self.receiver is not None and self.data_plane:
            self._spawn("accept", self._accept)

    def _spawn(self, what: str, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, name=f"incoming-{what}-{self.name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        assert self.receiver is not None
        try:
            self.receiver.start(self._stop)
        except BaseException as e:  # reported by the next event that needs the channels
            self._accept_error = e
            if self._wake is not None and not self._stop.is_set():
                self._wake()

    def _start_standby(self, shell: Domain) -> None:
        try:
            self.deps.guests.start_standby(shell)
            self.standby_started = True
        except BaseException as e:
            self._standby_error = e
        finally:
            self._standby_done.set()

    def _channels_ready(self) -> None:
        for t in self._threads:
            if t.name.startswith("incoming-accept"):
                t.join(self.deps.policy.prepare_s + 5)
        if self._accept_error is not None:
            err = self._accept_error
            raise err if isinstance(err, LdmError) else TransferError(f"data channels: {err}")

    def check(self) -> None:
        """Raise what stopped the transfer while the engine waited for the source (the engine was woken)."""
        if self._accept_error is not None:
            self._channels_ready()
        if isinstance(self.receiver, DataPlaneImage):
            self.receiver.check()

    def ready_for_switch_over(self) -> None:
        """Before the target answers the source's last Ping before its suspend: the standby guest is up
        (or failed: FinalState reports it), so starting it is not part of the pause."""
        if self.data_plane:
            self._standby_done.wait(STANDBY_WAIT_S)

    # ------------------------------------------------------------------ the transfer
    def pages(self, ev: MemPages) -> None:
        assert self.receiver is not None
        self._channels_ready()
        self.receiver.pages(ev)

    def round_done(self, ev: RoundDone) -> None:
        assert self.receiver is not None
        self._channels_ready()
        self.receiver.round_done(ev)

    def verify_final(self, ev: FinalState) -> None:
        """Before the journal may say "complete domain held": the image is complete, flushed, and (data
        plane) the standby guest that will run it is up."""
        assert self.receiver is not None
        self._channels_ready()
        self.receiver.verify_final(ev)
        if self.data_plane:
            if not self._standby_done.wait(STANDBY_WAIT_S):
                raise TransferError(
                    f"the standby guest of LDom {self.name} did not come up within {STANDBY_WAIT_S:g} s"
                )
            if self._standby_error is not None:
                e = self._standby_error
                raise TransferError(
                    f"the guest of LDom {self.name} cannot start here: "
                    f"{e.message if isinstance(e, LdmError) else e}"
                )

    # ------------------------------------------------------------------ the hand-off
    def start(self, active: Domain, cpu_state: bytes) -> int:
        """Run the domain here from its complete image; the guest's pid."""
        guests = self.deps.guests
        if self.data_plane and self.standby_started:
            self.downtime_s = guests.restore(self.name, cpu_state)
            pid = guests.pid(self.name)
        else:
            rec = guests.start_incoming(active, self.deps.journals.image_path(self.migration_id), cpu_state)
            self.downtime_s = rec.downtime
            pid = rec.pid
        self.started = True
        return pid

    def close(self) -> None:
        self._stop.set()
        if self.receiver is not None:
            self.receiver.close()

    def discard(self) -> None:
        """Nothing of the domain stays: receiver stopped, guest stopped, image scrubbed in the background
        (in that order: nothing may map the file when its blocks are freed)."""
        self._stop.set()  # a channel accept or a test-hook pause in progress ends now
        for t in self._threads:
            if t.name.startswith("incoming-accept"):
                t.join(self.deps.policy.prepare_s + 5)
        if self.receiver is not None:
            try:
                self.receiver.abort()
            except Exception:
                log.exception("stopping the receiver of LDom %s failed", self.name)
        for t in self._threads:
            t.join(30.0)  # the standby start ends within its own start deadline
        images = [set_aside(self.image_path), set_aside(self.deps.journals.image_path(self.migration_id))]
        if self.started or self.standby_started or self.deps.guests.running(self.name):
            try:
                self.deps.guests.destroy(self.name)
            except LdmError as e:
                log.error("stopping the guest of the discarded LDom %s failed: %s", self.name, e)
        images.append(set_aside(self.deps.guests.memory_path(self.name)))  # where the issue-3 start put it
        for path in images:
            scrub(path, aside=False)
