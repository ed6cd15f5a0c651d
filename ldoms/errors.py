"""The error tree.

Two kinds, as in Ganeti: an `OpPrereqError` means the request was refused and nothing changed; an
`OpExecError` means something failed while changing state (the operation undid what it could).  Every error
carries a stable `code` for machines and a message that names the object, the value and the rule, in LDoms'
wording where the spec gives one.
"""

from __future__ import annotations


class LdmError(Exception):
    """Base of every error ldm prints.  `exit_code` is what the CLI exits with."""

    code: str = "error"
    exit_code: int = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class UsageError(LdmError):
    """Syntax: unknown option, missing operand, malformed value."""

    code = "usage"
    exit_code = 2


class OpPrereqError(LdmError):
    """The request cannot be carried out in the current state; nothing changed."""

    code = "prereq"


class NotFoundError(OpPrereqError):
    code = "not-found"


class AlreadyExistsError(OpPrereqError):
    code = "exists"


class ResourceError(OpPrereqError):
    """Not enough, or not the right, free resources to satisfy a request."""

    code = "resources"


class StateError(OpPrereqError):
    """The object is in the wrong state for the request."""

    code = "state"


class BusyError(OpPrereqError):
    """Refused because another operation (a migration, a delayed reconfiguration) holds the object."""

    code = "busy"


class OpExecError(LdmError):
    """Failed while executing; partial work was undone."""

    code = "exec"


class PlatformError(LdmError):
    """A platform description (preset or TOML file) is malformed or does not match the stored host."""

    code = "platform"


class AuthError(LdmError):
    code = "auth"
    exit_code = 3


class DaemonUnavailable(LdmError):
    """ldm cannot reach ldmd."""

    code = "daemon"
