"""Errors of the migration data plane (the parallel encrypted page channels).

Every error is an `OpExecError` (the migration was under way; the daemon undoes it) with a stable `code`, and
its message names the channel, the frame sequence and round where they are known, and the rule broken.  Any
of them aborts the whole data plane of that migration: a frame that fails a check is never applied, and the
target's image is to be scrubbed and discarded (SPEC §2.3, failure row).

`FrameRejected` and its subclasses mean the peer's bytes broke a rule (tampering, a replay, a wrong key, a
broken sender); `ChannelClosed` means a data socket ended or failed; `DataPlaneCancelled` means this side
was told to stop; `NonceExhausted` is the local refusal to ever reuse a nonce.
"""

from __future__ import annotations

from ldoms.errors import OpExecError


class DataPlaneError(OpExecError):
    code = "dataplane"


class DataPlaneCancelled(DataPlaneError):
    """`abort()` was called on this side (the daemon cancelled the migration)."""

    code = "dataplane-cancelled"


class ChannelClosed(DataPlaneError):
    """A data socket was closed or failed: the peer aborted, or the link broke."""

    code = "dataplane-closed"


class NoSpace(DataPlaneError):
    """The filesystem holding the target's image is full (a lane's write failed with ENOSPC)."""

    code = "no-space"


class RoundTimeout(DataPlaneError):
    """A round (or the goodbye) did not complete within the caller's deadline; the plane is aborted."""

    code = "dataplane-timeout"


class NonceExhausted(DataPlaneError):
    """A channel's frame counter would wrap: sending again would reuse a nonce under the same key."""

    code = "dataplane-nonce-exhausted"


class FrameRejected(DataPlaneError):
    """The receiver refused a frame; nothing of it was applied."""

    code = "dataplane-frame"


class MalformedFrame(FrameRejected):
    """Bad magic, version, kind, flags or lengths: the stream is not a data-plane stream of this version."""

    code = "dataplane-malformed"


class TruncatedFrame(FrameRejected):
    """The stream ended inside a frame, or before the end-of-round / goodbye marker it owed."""

    code = "dataplane-truncated"


class TamperedFrame(FrameRejected):
    """The AES-GCM tag did not verify: the header, page table or payload was altered on the way."""

    code = "dataplane-tampered"


class WrongKey(FrameRejected):
    """The sender's key does not match ours (its key id differs): the two daemons hold different secrets."""

    code = "dataplane-wrong-key"


class WrongMigration(FrameRejected):
    """A frame names another migration (a stray or cross-wired connection)."""

    code = "dataplane-wrong-migration"


class MisroutedFrame(FrameRejected):
    """A frame names another channel than the one it arrived on (cross-wired sockets)."""

    code = "dataplane-misrouted"


class ReplayedFrame(FrameRejected):
    """A frame whose sequence number was already seen on this channel."""

    code = "dataplane-replayed"


class ReorderedFrame(FrameRejected):
    """A frame ahead of the next expected sequence number: frames were dropped or reordered."""

    code = "dataplane-reordered"


class RoundMismatch(FrameRejected):
    """Frames of a round arrived after that round ended, or an end-of-round marker disagrees with the
    frames that preceded it."""

    code = "dataplane-round"


class GeometryMismatch(FrameRejected):
    """The sender's memory size, page size or channel count differs from the receiver's."""

    code = "dataplane-geometry"
