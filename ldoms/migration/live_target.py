"""The target's page receivers, behind one interface: pages on the control link (`ControlLinkImage`, the
1.2 fallback) or over the parallel encrypted data plane (`DataPlaneImage`), and scrubbing a discarded image.

Theory of operation (DESIGN 3.4-3.5).  The target engine makes one receiver at Prepare and feeds it the
transfer's control events; the receiver owns the image file until the hand-off:

* `DataPlaneImage` creates the image where the guest will run it (sparse; PrepareAck does not wait for any
  allocation: a filesystem without room for the domain's memory is refused at once, naming the host and the
  path, and one that fills up later fails a lane's write the same way, never a SIGBUS in a mapping);
  the lanes `pwrite` the pages (`sink.FileSink`), which on tmpfs allocates them without zeroing or mapping
  them first.  It listens on an ephemeral data port (`dataplane_link`), takes the N channels
  after PrepareAck, and receives with a `DataPlaneReceiver` straight into the image.  Each MemPages
  descriptor names one data-plane chunk: the receiver waits for it (`receive_round`, under the data-plane
  deadline) and checks its frames and pages against the descriptor; RoundDone checks the round's pages;
  FinalState's digest must equal the transcript of every chunk (`live_plan.Transcript`).  Every frame was
  authenticated by AES-GCM on arrival, so these checks make the image "complete and verified" without
  reading it back during the pause.  The image is not flushed to disk in the pause: like a guest's memory it
  lives in the page cache, which an ldmd crash does not lose; the target's journal records the boot it was
  received in, and after a reboot an unsettled "complete image" counts as lost (`image_survives`).
* `ControlLinkImage` is the issue-3 `ImageWriter` (inline MemPages, whole-image digest).

`scrub(path)` takes a discarded image away at once (renamed aside) and frees its blocks (truncate) and name
in a background thread, so a cancel never holds the host lock while gigabytes are released.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ldoms.migration import dataplane_errors as dperrs
from ldoms.migration.channels import (
    DEFAULT_FRAME_BYTES,
    DataPlaneReceiver,
    MemoryFile,
    Workers,
    choose_workers,
)
from ldoms.migration.dataplane_keys import SECRET_BYTES
from ldoms.migration.dataplane_link import ChannelListener, is_idle_timeout
from ldoms.migration.events import FinalState, MemPages, RoundDone
from ldoms.migration.live_plan import PrimaryCaps, Transcript, read_descriptor, side_channels
from ldoms.migration.transfer import ImageWriter, TransferError
from ldoms.units import PAGE_SIZE

log = logging.getLogger("ldmd.migration.target")


class ImageSpaceError(TransferError):
    code = "no-space"


class ImageReceiver(Protocol):
    path: Path
    ack: dict[str, Any]  # PrepareAck's data_plane answer

    def start(self, cancelled: threading.Event) -> None: ...

    def pages(self, ev: MemPages) -> None: ...

    def round_done(self, ev: RoundDone) -> None: ...

    def verify_final(self, ev: FinalState) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


# ------------------------------------------------------------------------------------------ control link
class ControlLinkImage:
    """Pages inline in MemPages (no data plane was negotiated); the whole image's digest in FinalState."""

    def __init__(self, path: Path, blocks: Sequence[tuple[int, int]]) -> None:
        self.path = path
        self.ack: dict[str, Any] = {}
        self.writer = ImageWriter(path, blocks)

    def start(self, cancelled: threading.Event) -> None:
        pass

    def pages(self, ev: MemPages) -> None:
        self.writer.write(ev)

    def round_done(self, ev: RoundDone) -> None:
        self.writer.end_round(ev)

    def verify_final(self, ev: FinalState) -> None:
        digest = self.writer.digest()
        if ev.algorithm != "sha256" or not hmac.compare_digest(digest, ev.checksum):
            raise TransferError(
                f"the memory image does not match the source's checksum ({ev.algorithm} "
                f"{ev.checksum[:16]}..., received {digest[:16]}...): pages were lost or damaged"
            )
        self.writer.sync()
        self.writer.close()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()


# -------------------------------------------------------------------------------------------- data plane
def create_image(path: Path, size: int, *, host: str) -> None:
    """A new sparse image of `size` bytes, on a filesystem with room for all of it (ImageSpaceError
    otherwise: the message names the host and the path).  All of it, not only the pages that will travel:
    the guest will write its holes too, and on a full filesystem a write to a hole of a mapped file is a
    SIGBUS that kills the guest (at its restore, or later).  Nothing is reserved: the lanes' writes allocate
    the pages (`sink.FileSink`), and a filesystem that fills up meanwhile fails the write with ENOSPC,
    reported the same way."""
    needed = size
    try:
        st = os.statvfs(path.parent)
    except OSError as e:
        raise _space_error(e, host, path, size) from None
    if needed > st.f_bavail * st.f_frsize:
        raise _space_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), host, path, needed)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise _space_error(e, host, path, size) from None
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise _space_error(e, host, path, size) from None
    os.close(fd)


def _space_error(e: OSError, host: str, path: Path, size: int) -> TransferError:
    why = (e.strerror or str(e)).lower()
    mib = size / (1024 * 1024)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ImageSpaceError(
            f"Target host {host} has no room for the memory image: {path}: {why} ({mib:.0f} MiB for the "
            "domain's memory); free space there and try again"
        )
    return TransferError(f"Target host {host} cannot create the memory image {path}: {why}")


class DataPlaneImage:
    """The image fed by the data plane (see the module docstring)."""

    def __init__(
        self,
        *,
        path: Path,
        size: int,
        offer: Mapping[str, Any],
        migration_id: str,
        bind_host: str,
        host: str,
        primary: PrimaryCaps,
        cores: int,
        idle_s: float,
        accept_s: float,
        on_progress: Callable[[int], None] | None = None,
        before_receive: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        secret = bytes.fromhex(str(offer.get("secret", "")))
        if len(secret) != SECRET_BYTES:
            raise TransferError("the source's data-plane offer carries no valid secret")
        offered = offer.get("channels")
        frame_bytes = offer.get("frame_bytes", DEFAULT_FRAME_BYTES)
        if not isinstance(offered, int) or not isinstance(frame_bytes, int) or offered < 1:
            # Name the fields, never the whole offer: it carries the per-migration secret.
            raise TransferError(
                "the source's data-plane offer is malformed: channels must be a positive whole number "
                f"(got {offered!r:.40}) and frame_bytes a whole number (got {frame_bytes!r:.40})"
            )
        self.path = path
        self.size = size
        self.host = host
        self.idle_s = idle_s
        self.accept_s = accept_s
        self.secret = secret
        self.migration_id = migration_id
        self.frame_bytes = frame_bytes
        self.nchannels = min(offered, side_channels(primary, cores))
        self.on_progress = on_progress
        self.before_receive = before_receive  # a test hook: the channels are taken, nothing reads them yet
        self.transcript = Transcript()
        self.next_chunk = 0
        self.round_pages = 0
        self.on_error = on_error  # called from the pump thread when the data plane fails
        self.receiver: DataPlaneReceiver | None = None
        self._cond = threading.Condition()
        self._aborted = False  # set by abort(): no receiver may start after it
        self._got: dict[int, tuple[int, int]] = {}  # chunk -> (frames, pages), as the pump received them
        self._error: TransferError | None = None
        self._ended = False  # every channel said goodbye
        self._pump: threading.Thread | None = None
        create_image(path, size, host=host)
        try:
            self.workers = choose_workers(Workers.AUTO, self.nchannels, True, os.cpu_count() or 1)
            self.listener = ChannelListener(
                bind_host, migration_id, self.nchannels, secret=secret, idle_s=idle_s
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.ack: dict[str, Any] = {
            "port": self.listener.port,
            "channels": self.nchannels,
            "frame_bytes": frame_bytes,
        }

    def start(self, cancelled: threading.Event) -> None:
        socks = self.listener.accept_all(self.accept_s, cancelled)
        if self.before_receive is not None:
            self.before_receive()
        with self._cond:
            if self._aborted:  # the migration ended while the channels were being taken
                for sock in socks:
                    sock.close()
                raise TransferError("the data plane was stopped before it started")
            memory = MemoryFile(str(self.path), self.size)
            self.receiver = DataPlaneReceiver(
                self.secret,
                self.migration_id,
                socks,
                memory,
                frame_bytes=self.frame_bytes,
                workers=self.workers,
                on_progress=self._progress,
            )
        self._pump = threading.Thread(target=self._run_pump, name=f"pump-{self.path.name}", daemon=True)
        self._pump.start()

    def _progress(self, chunk: int, pages: int) -> None:
        if self.on_progress is not None:
            self.on_progress(pages)

    def _run_pump(self) -> None:
        """Take every chunk as it completes, without waiting for its descriptor: a frame refused in the
        middle of a chunk must stop the migration now, not when the (stalled) source announces the chunk."""
        assert self.receiver is not None
        chunk = 0
        while True:
            try:
                st = self.receiver.receive_round(chunk)  # the lanes' own deadline bounds every wait
            except dperrs.DataPlaneError as e:
                with self._cond:
                    if self.receiver.goodbyes_received:
                        self._ended = True
                    elif isinstance(e, dperrs.NoSpace):
                        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        self._error = _space_error(full, self.host, self.path, self.size)
                    else:
                        what = "stalled" if is_idle_timeout(e.message) else "refused the migration data"
                        why = f"Target host {self.host} {what}: {e.message}"
                        self._error = TransferError(why, code=e.code)
                    self._cond.notify_all()
                if self._error is not None and self.on_error is not None:
                    self.on_error()
                return
            with self._cond:
                self._got[chunk] = (st.frames, st.pages)
                self._cond.notify_all()
            chunk += 1

    def check(self) -> None:
        """Raise what stopped the data plane, if anything did."""
        if self._error is not None:
            raise self._error

    def _receive(self, chunk: int) -> tuple[int, int]:
        with self._cond:
            self._cond.wait_for(
                lambda: chunk in self._got or self._error is not None or self._ended, self.idle_s
            )
            self.check()
            got = self._got.pop(chunk, None)
        if got is None:
            raise TransferError(
                f"Target host {self.host}: data-plane chunk {chunk} did not arrive within {self.idle_s:g} s "
                "(deadline transfer_idle_s)",
                code="dataplane-timeout",
            )
        return got

    def pages(self, ev: MemPages) -> None:
        if ev.descriptor is None:
            raise TransferError("the source sent pages on the control link after agreeing a data plane")
        chunk, frames, pages = read_descriptor(ev.descriptor)
        if chunk != self.next_chunk:
            raise TransferError(
                f"data-plane chunk {chunk} announced where chunk {self.next_chunk} comes next"
            )
        got = self._receive(chunk)
        if got != (frames, pages):
            raise TransferError(
                f"data-plane chunk {chunk}: the source sent {frames} frames and {pages} pages, "
                f"{got[0]} frames and {got[1]} pages arrived"
            )
        self.transcript.add(chunk, frames, pages)
        self.next_chunk += 1
        self.round_pages += pages

    def round_done(self, ev: RoundDone) -> None:
        got, self.round_pages = self.round_pages, 0
        if (ev.pages, ev.nbytes) != (got, got * PAGE_SIZE):
            raise TransferError(
                f"round {ev.round} ended with {ev.pages} pages ({ev.nbytes} bytes) announced but {got} pages "
                "received over the data plane"
            )

    def verify_final(self, ev: FinalState) -> None:
        mine = self.transcript.hexdigest()
        if ev.algorithm != Transcript.algorithm or not hmac.compare_digest(mine, ev.checksum):
            raise TransferError(
                f"the transfer's accounting does not match the source's ({ev.checksum[:16]}... sent, "
                f"{mine[:16]}... received over {self.transcript.chunks} chunks): pages were lost"
            )
        with self._cond:  # every channel said goodbye: nothing is in flight
            self._cond.wait_for(lambda: self._ended or self._error is not None, self.idle_s)
            self.check()
            if not self._ended:
                raise TransferError(
                    f"the data plane did not end within {self.idle_s:g} s of the final state",
                    code="dataplane",
                )

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Stop receiving now (from any thread): nothing writes into the image afterwards."""
        with self._cond:
            self._aborted = True
        self.listener.close()
        if self.receiver is not None:
            self.receiver.abort()
        if self._pump is not None and self._pump is not threading.current_thread():
            self._pump.join(10.0)


# ------------------------------------------------------------------------------------------------- scrub
def set_aside(path: Path) -> Path | None:
    """Rename a discarded image out of every other name's way (a guest's stop does not delete it)."""
    if not path.exists():
        return None
    aside = path.with_name(f".{path.name}.scrub-{os.getpid()}-{threading.get_ident()}")
    try:
        os.replace(path, aside)
    except OSError as e:
        log.error("cannot move the discarded image %s aside for scrubbing: %s", path, e)
        return path
    return aside


def scrub(path: Path | None, *, background: bool = True, aside: bool = True) -> threading.Thread | None:
    """Take a discarded image away: renamed aside now (unless it already was), its blocks freed and its name
    removed in a thread (its pages never reach another domain; the host lock is not held meanwhile).  Only
    call it once nothing maps the file any more: a mapping of a truncated file faults."""
    if path is None:
        return None
    if aside:
        path = set_aside(path)  # type: ignore[assignment]
        if path is None:
            return None
    if not path.exists():
        return None

    def work() -> None:
        try:
            os.truncate(path, 0)  # frees (punches) every block: no byte of the guest stays on disk
        except OSError as e:
            log.error("scrubbing the discarded image %s failed: %s", path, e)
        with contextlib.suppress(OSError):
            path.unlink()

    if not background:
        work()
        return None
    t = threading.Thread(target=work, name=f"scrub-{path.name}", daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------------------------- durability
def boot_id() -> str:
    """This boot of the host (Linux); "" where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def image_survives(recorded: object) -> bool:
    """Whether an incoming image received in the boot `recorded` is still whole: it was never flushed in
    the pause, so a reboot since (a power loss, a host crash) may have torn it."""
    if not isinstance(recorded, str) or not recorded:
        return True  # an issue-3 image (flushed before the journal said so), or a host without boot ids
    return recorded == boot_id()
