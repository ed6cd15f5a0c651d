"""Errors of the host-to-host link, its configuration and its credentials.

Every link error names the other end (`target host host2 (192.0.2.7:6482)` on the source side, `peer
192.0.2.1:40112` on the target side), so a message read in a log or on a terminal says which link broke.
One class per cause, so the daemon can react to the cause and not to the wording:

    PeerUnreachable         name not resolved, host or network unreachable
    PeerConnectionRefused   nothing listens on the port
    PeerTimeout             connect, handshake or a read/write did not finish in time
    PeerUntrusted           the server's certificate is verified by neither a pin nor a CA
      PeerCertificateMismatch   ... because it differs from the recorded pin (expected vs actual)
    PeerCertificateRefused  the target refused *our* certificate (certificate mode)
    PeerTlsError            any other TLS failure (no common protocol version, bad record, alert)
    PeerClosed              the other end closed or reset the connection
    FrameTooLarge           a frame above the link's limit, sent or announced
    PeerProtocolError       the other end is not an ldmd peer link (bad greeting)
"""

from __future__ import annotations

from ldoms.errors import AuthError, LdmError, OpExecError, UsageError


class PeerConfigError(LdmError):
    """The home's peer configuration (TLS material, peers, CAs, users) is missing, unreadable or malformed."""

    code = "peer-config"


class PasswordFileError(UsageError):
    """`-p FILE` names a file that breaks the password-file rules (SPEC §7.17)."""

    code = "password-file"


class PeerError(OpExecError):
    """The link to another ldmd failed.  `where` is the description of the other end used in the message."""

    code = "peer-link"

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class PeerUnreachable(PeerError):
    code = "peer-unreachable"


class PeerConnectionRefused(PeerError):
    code = "peer-refused"


class PeerTimeout(PeerError):
    code = "peer-timeout"


class PeerUntrusted(PeerError):
    code = "peer-untrusted"

    def __init__(self, message: str, *, where: str = "", actual: str = "") -> None:
        super().__init__(message, where=where)
        self.actual = actual


class PeerCertificateMismatch(PeerUntrusted):
    code = "peer-cert-mismatch"

    def __init__(self, message: str, *, where: str = "", expected: str = "", actual: str = "") -> None:
        super().__init__(message, where=where, actual=actual)
        self.expected = expected


class PeerCertificateRefused(PeerError):
    code = "peer-cert-refused"


class PeerTlsError(PeerError):
    code = "peer-tls"


class PeerClosed(PeerError):
    code = "peer-closed"


class PeerClosedInHandshake(PeerClosed):
    """The other end closed the connection during the TLS handshake: what a listener at its limit of
    connections not yet logged in does (`ldoms.peer.listener`), so trying again shortly may succeed."""


class FrameTooLarge(PeerError):
    code = "frame-too-large"


class PeerProtocolError(PeerError):
    code = "peer-protocol"


class AuthenticationFailed(AuthError):
    """The target refused the source's credentials.  The message is the line the client prints."""

    code = "auth-failed"


class UnknownUser(AuthenticationFailed):
    code = "auth-unknown-user"


class WrongPassword(AuthenticationFailed):
    code = "auth-wrong-password"


class CertificateNotAccepted(AuthenticationFailed):
    code = "auth-certificate"


class LoginThrottled(AuthenticationFailed):
    """Too many failed logins from the source's address or for the user name: refused before the password
    is looked at (`ldoms.peer.throttle`).  `retry_after` is the wait in seconds."""

    code = "auth-throttled"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
