"""The error tree.

Two kinds, as in Ganeti: an `OpPrereqError` means the request was refused and nothing changed; an
`OpExecError` means something failed while changing state (the operation undid what it could).  Every error
carries a stable `code` for machines and a message that names the object, the value and the rule, in LDoms'
wording where the spec gives one.
"""

from __future__ import annotations

import re


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


# C0/C1 controls, DEL, the Unicode line and paragraph separators, and lone surrogates (which no UTF-8 stream
# can carry): what would break a message's one line or its printing.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LONG_WORD = re.compile(r"\S{121,}")
MAX_MESSAGE = 2000  # characters: a message echoing a megabyte operand is no clearer than its first words


def one_line(text: str) -> str:
    """`text` as one printable line of bounded length that still names what it quotes: every unprintable
    character written as an escape (`\\n`, `\\x00`, `\\ud800`), every word longer than 120 characters cut
    to its first 100 (a hostile name or path can be megabytes), and the whole cut at MAX_MESSAGE."""

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        if c in _ESCAPES:
            return _ESCAPES[c]
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    out = _LONG_WORD.sub(lambda m: m.group()[:100] + "...", _UNPRINTABLE.sub(escape, text))
    return out if len(out) <= MAX_MESSAGE else out[: MAX_MESSAGE - 3] + "..."
