"""Who may migrate domains *into* this host, and the password-file rules of `ldm migrate-domain -p`.

    HOME/users.toml   written by `ldmd user add|remove`, mode 0600:

        [users.alice]
        kdf = "scrypt"
        n = 32768            # scrypt cost parameters, stored per user so they can be raised later
        r = 8
        p = 1
        salt = "..."         # base64, 16 random bytes per user
        hash = "..."         # base64, 32 bytes

Verification recomputes scrypt with the stored salt and parameters and compares with
`hmac.compare_digest`.  Stored parameters are bounded, so a tampered file cannot make one login eat
gigabytes.

Unknown user vs wrong password.  The source is told which of the two failed
(`Authentication failed for user X on target host Y: unknown user` / `...: wrong password`).  This lets
anyone who can reach the peer port learn whether a user name exists on this host.  We accept that:
LDoms control domains sit on trusted administration networks (the guides require the managers to be
reachable only there); the user names of an ldmd are admin accounts that are no secret among those admins;
the password is still required and is only ever sent over a TLS link whose server certificate the source
verified; and a migration that fails at 3 a.m. is fixed much faster when the message says which half of the
credentials was wrong.  The daemon's log records both cases with the client's address.

Rate limiting.  Password logins go through the home's `LoginThrottle` (`ldoms.peer.throttle`: back-off per
source address and per user name) before the users file is read: a throttled attempt is refused with
`LoginThrottled`, whose message is the same for a user that exists and one that does not, and costs no
scrypt.  A login that would be refused only because others from the same address are still being checked
waits for them (at most `LOGIN_PATIENCE_S`): several migrations started at once from one host all log in.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldoms.errors import AlreadyExistsError, NotFoundError, UsageError
from ldoms.peer.errors import (
    CertificateNotAccepted,
    LoginThrottled,
    PasswordFileError,
    PeerConfigError,
    UnknownUser,
    WrongPassword,
)
from ldoms.peer.files import atomic_write, config_lock, read_toml, toml_dumps
from ldoms.peer.throttle import LoginThrottle

log = logging.getLogger("ldmd.peer.auth")

USERS_NAME = "users.toml"
MAX_PASSWORD_BYTES = 4096
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_HEADER = "Users allowed to migrate domains into this ldoms host.\nWritten by `ldmd user ...`."
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
_MAX_MEMORY = 256 * 1024 * 1024  # scrypt needs 128*n*r*p bytes: the most one verification may use


@dataclass(frozen=True, slots=True)
class ScryptParams:
    n: int = 2**15  # 32 MiB and ~0.1 s per verification: cheap for a migration, costly for guessing
    r: int = 8
    p: int = 1
    dklen: int = 32
    salt_len: int = 16

    def __post_init__(self) -> None:
        if not (2 <= self.n <= _MAX_N and self.n & (self.n - 1) == 0):
            raise PeerConfigError(f"scrypt n={self.n} must be a power of two between 2 and {_MAX_N}")
        if not (1 <= self.r <= _MAX_R and 1 <= self.p <= _MAX_P):
            raise PeerConfigError(
                f"scrypt r={self.r}, p={self.p} out of range (r 1..{_MAX_R}, p 1..{_MAX_P})"
            )
        if 128 * self.n * self.r * self.p > _MAX_MEMORY:
            raise PeerConfigError(
                f"scrypt n={self.n}, r={self.r}, p={self.p} needs more than {_MAX_MEMORY >> 20} MiB per login"
            )
        if not (16 <= self.dklen <= 64 and 8 <= self.salt_len <= 64):
            raise PeerConfigError(f"scrypt dklen={self.dklen}, salt_len={self.salt_len} out of range")


DEFAULT_SCRYPT = ScryptParams()


@dataclass(frozen=True, slots=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    hash: bytes = b""


def _scrypt(password: str, h: PasswordHash, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=h.salt, n=h.n, r=h.r, p=h.p, dklen=dklen, maxmem=256 * h.n * h.r * h.p
    )


def hash_password(password: str, params: ScryptParams = DEFAULT_SCRYPT) -> PasswordHash:
    h = PasswordHash(n=params.n, r=params.r, p=params.p, salt=secrets.token_bytes(params.salt_len))
    return PasswordHash(n=h.n, r=h.r, p=h.p, salt=h.salt, hash=_scrypt(password, h, params.dklen))


def check_password(password: str, h: PasswordHash) -> bool:
    """Constant-time comparison of scrypt(password) with the stored hash."""
    return hmac.compare_digest(_scrypt(password, h, len(h.hash)), h.hash)


def check_user_name(name: str) -> str:
    if not _USER_RE.fullmatch(name):
        raise UsageError(
            f"invalid user name '{name}': 1 to 32 letters, digits, '_', '.' or '-', not starting with a "
            "digit, '.' or '-'"
        )
    return name


def users_path(home: Path) -> Path:
    return home / USERS_NAME


def _users(home: Path) -> dict[str, Any]:
    table = read_toml(users_path(home), what="user database").get("users", {})
    if not isinstance(table, dict):
        raise PeerConfigError(f"user database {users_path(home)}: [users] is not a table")
    return table


def _record(home: Path, name: str, body: Any) -> PasswordHash:
    where = f"user database {users_path(home)}: user {name}"
    try:
        if body["kdf"] != "scrypt":
            raise PeerConfigError(f"{where}: unknown kdf {body['kdf']!r} (only scrypt is known)")
        params = ScryptParams(n=int(body["n"]), r=int(body["r"]), p=int(body["p"]))
        salt = base64.b64decode(body["salt"], validate=True)
        digest = base64.b64decode(body["hash"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise PeerConfigError(f"{where} is malformed: {e}") from e
    except PeerConfigError as e:
        raise PeerConfigError(f"{where}: {e}") from e
    if not (8 <= len(salt) <= 64 and 16 <= len(digest) <= 64):
        raise PeerConfigError(f"{where}: salt or hash has an impossible length")
    return PasswordHash(n=params.n, r=params.r, p=params.p, salt=salt, hash=digest)


def list_users(home: Path) -> list[str]:
    return sorted(_users(home))


def add_user(home: Path, name: str, password: str, *, params: ScryptParams | None = None) -> None:
    """Record a user with a fresh salt and `params` (default: `DEFAULT_SCRYPT`)."""
    check_user_name(name)
    if not password:
        raise UsageError(f"the password of user {name} must not be empty")
    h = hash_password(password, params or DEFAULT_SCRYPT)  # outside the lock: it takes a while
    with config_lock(home):
        doc = read_toml(users_path(home), what="user database")
        users = doc.setdefault("users", {})
        if name in users:
            raise AlreadyExistsError(f"User {name} already exists: remove it first to change its password")
        users[name] = {
            "kdf": "scrypt",
            "n": h.n,
            "r": h.r,
            "p": h.p,
            "salt": base64.b64encode(h.salt).decode("ascii"),
            "hash": base64.b64encode(h.hash).decode("ascii"),
        }
        atomic_write(users_path(home), toml_dumps(doc, header=_HEADER).encode("utf-8"))


def remove_user(home: Path, name: str) -> None:
    with config_lock(home):
        doc = read_toml(users_path(home), what="user database")
        users = doc.get("users", {})
        if name not in users:
            raise NotFoundError(f"User {name} not found")
        del users[name]
        atomic_write(users_path(home), toml_dumps(doc, header=_HEADER).encode("utf-8"))


# How long a login waits behind others from the same address (or for the same user) that are being checked,
# rather than being refused because they might fail (ldoms.peer.throttle: "Bursts of honest logins").  Well
# under the listener's 30 s login clock; scrypt takes ~0.1 s a login.
LOGIN_PATIENCE_S = 10.0

_THROTTLES: OrderedDict[Path, LoginThrottle] = OrderedDict()
_THROTTLES_LOCK = threading.Lock()
_MAX_THROTTLES = 64  # homes served by one process (one in ldmd; many in a test run)


def throttle_for(home: Path) -> LoginThrottle:
    """The login throttle of `home` (one per home and process, created on first use)."""
    key = home.absolute()
    with _THROTTLES_LOCK:
        found = _THROTTLES.pop(key, None) or LoginThrottle()
        _THROTTLES[key] = found
        while len(_THROTTLES) > _MAX_THROTTLES:
            _THROTTLES.popitem(last=False)
        return found


def client_address(client: str) -> str:
    """The address in a client description: `192.0.2.1:4000`, `[2001:db8::1]:4000`, `peer 192.0.2.1:4000`
    or `peer NAME (192.0.2.1:4000)` give the address without its port; anything else is returned as is."""
    text = client.strip().rstrip(")").rsplit(maxsplit=1)[-1].lstrip("(") if client.strip() else ""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and (host.startswith("[") or ":" not in host):
        return host.strip("[]")
    return text


def authenticate(
    home: Path,
    user: str,
    password: str,
    *,
    host_name: str,
    client: str = "",
    address: str | None = None,
    throttle: LoginThrottle | None = None,
) -> None:
    """Accept `user`/`password` or raise LoginThrottled / UnknownUser / WrongPassword with the line the
    source prints.  `address` (default: taken from `client`) is what the throttle counts failures by;
    `throttle` defaults to the home's (`throttle_for`)."""
    table = _users(home)  # a broken users file is the admin's fault: reported, never counted as a failure
    src = f" from {client}" if client else ""
    gate = throttle if throttle is not None else throttle_for(home)
    source = client_address(client) if address is None else address
    wait = gate.admit(user, source, patience_s=LOGIN_PATIENCE_S)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        log.warning(
            "migration login refused%s: too many failed logins (user %r; next attempt in %d s)",
            src,
            user,
            seconds,
        )
        raise LoginThrottled(
            f"Authentication refused for user {user} on target host {host_name}: too many failed logins "
            f"from this address or for this user; try again in {seconds} s",
            retry_after=wait,
        )
    try:
        body = table.get(user)
        if body is None:
            log.warning("migration login refused%s: unknown user %r", src, user)
            raise UnknownUser(
                f"Authentication failed for user {user} on target host {host_name}: unknown user"
            )
        if not check_password(password, _record(home, user, body)):
            log.warning("migration login refused%s: wrong password for user %r", src, user)
            raise WrongPassword(
                f"Authentication failed for user {user} on target host {host_name}: wrong password"
            )
    except BaseException:
        gate.failed(user, source)  # charged it stays; logins waiting behind it may now be refused
        raise
    gate.succeeded(user, source)
    log.info("migration login%s: user %r authenticated by password", src, user)


def authenticate_certificate(identity: object | None, *, host_name: str, client: str = "") -> None:
    """Certificate mode: accept a link whose client proved a trusted certificate (`PeerLink.identity`)."""
    src = f" from {client}" if client else ""
    if identity is None:
        log.warning("migration login refused%s: certificate mode without a client certificate", src)
        raise CertificateNotAccepted(
            f"Authentication failed on target host {host_name}: certificate mode needs a client certificate "
            f"that {host_name} trusts, and the source presented none"
        )
    log.info("migration login%s: authenticated by certificate (%s)", src, identity)


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The password of `ldm migrate-domain -p FILE` (SPEC §7.17): the first line, without its newline (and a
    carriage return before it); refused when missing, not a regular file, accessible by group or others,
    empty, longer than 4096 bytes or not UTF-8."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOCTTY)
    except FileNotFoundError:
        raise PasswordFileError(f"Password file {name} does not exist") from None
    except OSError as e:
        raise PasswordFileError(
            f"Password file {name} cannot be read: {(e.strerror or str(e)).lower()}"
        ) from None
    try:
        st = os.fstat(fd)  # of what we opened: no window between the check and the read
        if not stat.S_ISREG(st.st_mode):
            raise PasswordFileError(f"Password file {name} is not a regular file")
        if st.st_mode & 0o077:
            raise PasswordFileError(
                f"Password file {name} must not be accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})"
            )
        data = b""
        while b"\n" not in data and len(data) <= MAX_PASSWORD_BYTES:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise PasswordFileError(
            f"Password file {name} cannot be read: {(e.strerror or str(e)).lower()}"
        ) from None
    finally:
        os.close(fd)
    line = data.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > MAX_PASSWORD_BYTES:
        raise PasswordFileError(
            f"Password file {name}: the first line is longer than {MAX_PASSWORD_BYTES} bytes"
        )
    if not line:
        raise PasswordFileError(f"Password file {name} is empty: the password is its first line")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordFileError(f"Password file {name}: the first line is not valid UTF-8") from None


def prompt_new_password(user: str, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """Ask twice without echo (`ldmd user add` without --password-file)."""
    first = prompt(f"New password for {user}: ")
    if not first:
        raise UsageError(f"the password of user {user} must not be empty")
    if prompt(f"Re-enter the password for {user}: ") != first:
        raise UsageError(f"the passwords entered for user {user} do not match")
    return first
