"""The protocol's error classes and enumerations (split from `events` to keep each module short; import them
from either module)."""

from __future__ import annotations

import enum

from ldoms.errors import OpExecError


# ------------------------------------------------------------------------------------------------- errors
class ProtocolError(OpExecError):
    """A violation of the migration protocol.  Raise the Local/Remote subclasses."""

    code = "protocol"


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids; nothing was produced and our state is unchanged."""

    code = "protocol-local"


class InvalidEvent(LocalProtocolError):
    """An event field breaks its rule (raised while constructing the event)."""

    code = "protocol-invalid-event"


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.  The connection is now in ERROR.

    `farewell`, when set, holds the bytes of an Abort frame that tells the peer why.  It is set only where we
    may still abort, and from then on we count as aborted: persist `journal()` first, as for any send, then
    write the bytes (best effort) and close the link."""

    code = "protocol-remote"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.farewell: bytes | None = None


# ------------------------------------------------------------------------------------------ enumerations
class MessageType(enum.IntEnum):
    """Wire codes.  Never renumber: HELLO and ABORT are the version-independent pair."""

    HELLO = 1
    ABORT = 2
    AUTH = 3
    AUTH_RESULT = 4
    CHECK_REQUEST = 5
    CHECK_RESULT = 6
    PREPARE = 7
    PREPARE_ACK = 8
    MEM_PAGES = 9
    ROUND_DONE = 10
    SUSPEND = 11
    SUSPEND_ACK = 12
    FINAL_STATE = 13
    COMMIT_REQUEST = 14
    RESUMED = 15
    HANDOFF_DONE = 16
    CANCEL = 17
    PROGRESS = 18
    PING = 19
    PONG = 20
    RECOVERY_QUERY = 21
    RECOVERY_ANSWER = 22


class EventType(enum.StrEnum):
    """Transition-table keys.  Unrefined events use their MessageType's name."""

    HELLO = "Hello"
    ABORT = "Abort"
    AUTH = "Auth"
    AUTH_OK = "AuthResult(ok)"
    AUTH_FAILED = "AuthResult(failed)"
    CHECK_ACTIVE = "CheckRequest(active)"
    CHECK_COLD = "CheckRequest(bound/inactive)"
    CHECK_DRY_RUN = "CheckRequest(dry run)"
    CHECK_PASSED = "CheckResult(passed)"
    CHECK_FAILED = "CheckResult(failed)"
    PREPARE = "Prepare"
    PREPARE_ACK = "PrepareAck"
    MEM_PAGES = "MemPages"
    ROUND_DONE = "RoundDone"
    SUSPEND = "Suspend"
    SUSPEND_ACK = "SuspendAck"
    FINAL_STATE = "FinalState"
    COMMIT_REQUEST = "CommitRequest"
    RESUMED = "Resumed"
    HANDOFF_DONE = "HandoffDone"
    CANCEL = "Cancel"
    PROGRESS = "Progress"
    PING = "Ping"
    PONG = "Pong"
    RECOVERY_QUERY = "RecoveryQuery"
    RECOVERY_ANSWER = "RecoveryAnswer"


class Role(enum.StrEnum):
    SOURCE = "source"
    TARGET = "target"

    @property
    def peer(self) -> Role:
        return Role.TARGET if self is Role.SOURCE else Role.SOURCE


class MigrationMode(enum.StrEnum):
    """The source domain's state: it selects the checks and the path (live transfer, or cold)."""

    ACTIVE = "active"
    BOUND = "bound"
    INACTIVE = "inactive"


class AuthMethod(enum.StrEnum):
    PASSWORD = "password"
    CERTIFICATE = "certificate"


class Decision(enum.StrEnum):
    """What a participant does with its copy of the domain when the link dies (`protocol.outcome`)."""

    KEEP_SOURCE = "keep-source"  # the source copy stays the master: resume it if suspended, clear flag s
    SOURCE_ERROR = "source-error"  # keep the suspended source copy in the error state (flag e); admin decides
    DESTROY_SOURCE = "destroy-source"  # the target owns the domain: destroy the source copy
    DISCARD_TARGET = "discard-target"  # scrub and destroy the target shell, release its reservation
    KEEP_TARGET = "keep-target"  # the target holds the complete domain: record it, resume it if active
    NOTHING = "nothing"  # the conversation never touched a domain (a recovery query)
