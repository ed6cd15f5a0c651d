"""Migration users (scrypt hashes), authentication lines, and the `-p FILE` password-file rules."""

from __future__ import annotations

import base64
import logging
import os
import stat
import tomllib
from pathlib import Path

import pytest

from ldoms.errors import AlreadyExistsError, NotFoundError, UsageError
from ldoms.peer import credentials
from ldoms.peer.credentials import ScryptParams, read_password_file
from ldoms.peer.errors import (
    AuthenticationFailed,
    CertificateNotAccepted,
    PasswordFileError,
    PeerConfigError,
    UnknownUser,
    WrongPassword,
)
from ldoms.peer.files import atomic_write

FAST = ScryptParams(n=2**4, r=1, p=1)


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "DEFAULT_SCRYPT", FAST)


def pwfile(tmp_path: Path, data: bytes, mode: int = 0o600, name: str = "pw") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    p.chmod(mode)
    return p


# ---------------------------------------------------------------------- password file
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"secret\n", "secret"),
        (b"secret", "secret"),
        (b"secret\r\n", "secret"),
        (b"first\nsecond\n", "first"),
        (b"  spaced out \n", "  spaced out "),
        (b"secret\n\n", "secret"),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_password_file_first_line(tmp_path: Path, data: bytes, expected: str) -> None:
    assert read_password_file(pwfile(tmp_path, data)) == expected


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_password_file_owner_only_modes(tmp_path: Path, mode: int) -> None:
    assert read_password_file(str(pwfile(tmp_path, b"x\n", mode))) == "x"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o610, 0o601])
def test_password_file_refused_when_group_or_others_have_access(tmp_path: Path, mode: int) -> None:
    p = pwfile(tmp_path, b"secret\n", mode)
    expected = f"Password file {p} must not be accessible by group or others (mode {mode:04o})"
    with pytest.raises(PasswordFileError) as e:
        read_password_file(p)
    assert str(e.value) == expected
    assert e.value.exit_code == 2


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n", b"\nsecond line\n"])
def test_password_file_empty_refused(tmp_path: Path, data: bytes) -> None:
    p = pwfile(tmp_path, data)
    with pytest.raises(PasswordFileError, match=r"Password file .* is empty: the password is its first line"):
        read_password_file(p)


def test_password_file_missing(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match=r"Password file .*/nope does not exist"):
        read_password_file(tmp_path / "nope")


def test_password_file_not_regular(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(PasswordFileError, match="is not a regular file"):
        read_password_file(d)


def test_password_file_unreadable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PasswordFileError, match=r"cannot be read: not a directory"):
        read_password_file(blocker / "pw")


def test_password_file_too_long_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="the first line is longer than 4096 bytes"):
        read_password_file(pwfile(tmp_path, b"x" * 5000 + b"\n"))
    assert read_password_file(pwfile(tmp_path, b"x" * 4096 + b"\n" + b"y" * 9000, name="ok")) == "x" * 4096
    with pytest.raises(PasswordFileError, match="the first line is not valid UTF-8"):
        read_password_file(pwfile(tmp_path, b"\xff\xfe\n", name="bin"))


def test_password_file_through_a_symlink_checks_the_target(tmp_path: Path) -> None:
    target = pwfile(tmp_path, b"s\n", 0o644, name="real")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(PasswordFileError, match=r"\(mode 0644\)"):
        read_password_file(link)


# ---------------------------------------------------------------------- hashing
def test_hash_and_check_password() -> None:
    h = credentials.hash_password("secret", FAST)
    assert len(h.salt) == 16 and len(h.hash) == 32
    assert credentials.check_password("secret", h)
    assert not credentials.check_password("Secret", h)
    assert credentials.hash_password("secret", FAST).salt != h.salt  # a fresh salt per hash


def test_default_params_are_strong() -> None:
    p = ScryptParams()
    assert p.n >= 2**14 and p.r >= 8


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n": 3}, "must be a power of two"),
        ({"n": 2**21}, "must be a power of two"),
        ({"r": 0}, "out of range"),
        ({"p": 17}, "out of range"),
        ({"n": 2**20, "r": 8}, "needs more than 256 MiB per login"),
        ({"dklen": 8}, "dklen=8"),
    ],
)
def test_scrypt_params_bounds(kw: dict[str, int], match: str) -> None:
    with pytest.raises(PeerConfigError, match=match):
        ScryptParams(**kw)


# ---------------------------------------------------------------------- users
def test_add_list_remove_users(tmp_path: Path) -> None:
    assert credentials.list_users(tmp_path) == []
    credentials.add_user(tmp_path, "root", "pw1")
    credentials.add_user(tmp_path, "alice", "pw2")
    assert credentials.list_users(tmp_path) == ["alice", "root"]
    path = credentials.users_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rec = tomllib.loads(path.read_text())["users"]["alice"]
    assert rec["kdf"] == "scrypt" and (rec["n"], rec["r"], rec["p"]) == (FAST.n, FAST.r, FAST.p)
    assert "pw2" not in path.read_text()
    assert len(base64.b64decode(rec["salt"])) == 16
    with pytest.raises(AlreadyExistsError, match="User alice already exists"):
        credentials.add_user(tmp_path, "alice", "x")
    credentials.remove_user(tmp_path, "alice")
    assert credentials.list_users(tmp_path) == ["root"]
    with pytest.raises(NotFoundError, match="User alice not found"):
        credentials.remove_user(tmp_path, "alice")


def test_add_user_refusals(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid user name '1abc'"):
        credentials.add_user(tmp_path, "1abc", "pw")
    with pytest.raises(UsageError, match="the password of user bob must not be empty"):
        credentials.add_user(tmp_path, "bob", "")


def test_authenticate_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    credentials.add_user(tmp_path, "alice", "s3cret")
    caplog.set_level(logging.INFO, logger="ldmd.peer.auth")
    credentials.authenticate(tmp_path, "alice", "s3cret", host_name="host2", client="192.0.2.1:4000")
    with pytest.raises(WrongPassword) as wrong:
        credentials.authenticate(tmp_path, "alice", "nope", host_name="host2", client="192.0.2.1:4000")
    assert str(wrong.value) == "Authentication failed for user alice on target host host2: wrong password"
    with pytest.raises(UnknownUser) as unknown:
        credentials.authenticate(tmp_path, "bob", "s3cret", host_name="host2")
    assert str(unknown.value) == "Authentication failed for user bob on target host host2: unknown user"
    assert isinstance(unknown.value, AuthenticationFailed) and unknown.value.exit_code == 3
    logs = [r.getMessage() for r in caplog.records]
    assert "migration login from 192.0.2.1:4000: user 'alice' authenticated by password" in logs
    assert "migration login refused from 192.0.2.1:4000: wrong password for user 'alice'" in logs
    assert "migration login refused: unknown user 'bob'" in logs
    assert all("s3cret" not in m and "nope" not in m for m in logs)


def test_authenticate_uses_compare_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials.add_user(tmp_path, "alice", "pw")
    calls: list[tuple[bytes, bytes]] = []
    real = credentials.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", spy)
    credentials.authenticate(tmp_path, "alice", "pw", host_name="h")
    assert len(calls) == 1


def test_stored_parameters_are_used(tmp_path: Path) -> None:
    credentials.add_user(tmp_path, "alice", "pw", params=ScryptParams(n=2**5, r=2, p=1))
    rec = tomllib.loads(credentials.users_path(tmp_path).read_text())["users"]["alice"]
    assert (rec["n"], rec["r"]) == (32, 2)
    credentials.authenticate(tmp_path, "alice", "pw", host_name="h")  # verified with n=32, r=2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            'kdf = "md5"\nn = 16\nr = 1\np = 1\nsalt = "AAAAAAAAAAAAAAAAAAAAAA=="\nhash = "x"',
            "unknown kdf 'md5'",
        ),
        ('kdf = "scrypt"\nn = 16\nr = 1\np = 1\nsalt = "AAAA"', "is malformed"),
        ('kdf = "scrypt"\nn = 16\nr = 1\np = 1\nsalt = "!!"\nhash = "AAAA"', "is malformed"),
        ('kdf = "scrypt"\nn = 1048576\nr = 32\np = 16\nsalt = "AAAA"\nhash = "AAAA"', "per login"),
        ('kdf = "scrypt"\nn = 16\nr = 1\np = 1\nsalt = "AAAA"\nhash = "AAAA"', "impossible length"),
    ],
)
def test_tampered_user_records_are_refused(tmp_path: Path, body: str, match: str) -> None:
    atomic_write(credentials.users_path(tmp_path), f"[users.alice]\n{body}\n".encode())
    with pytest.raises(PeerConfigError, match=match):
        credentials.authenticate(tmp_path, "alice", "pw", host_name="h")


def test_users_table_must_be_a_table(tmp_path: Path) -> None:
    atomic_write(credentials.users_path(tmp_path), b'users = "x"\n')
    with pytest.raises(PeerConfigError, match=r"\[users\] is not a table"):
        credentials.list_users(tmp_path)


def test_users_file_with_loose_mode_is_refused(tmp_path: Path) -> None:
    credentials.add_user(tmp_path, "alice", "pw")
    os.chmod(credentials.users_path(tmp_path), 0o644)
    with pytest.raises(PeerConfigError, match="must not be accessible by group or others"):
        credentials.authenticate(tmp_path, "alice", "pw", host_name="h")


def test_authenticate_certificate() -> None:
    credentials.authenticate_certificate(object(), host_name="host2")
    with pytest.raises(CertificateNotAccepted) as e:
        credentials.authenticate_certificate(None, host_name="host2", client="192.0.2.1:1")
    assert str(e.value) == (
        "Authentication failed on target host host2: certificate mode needs a client certificate that host2 "
        "trusts, and the source presented none"
    )


def test_prompt_new_password() -> None:
    answers = iter(["pw", "pw"])
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    assert credentials.prompt_new_password("alice", prompt) == "pw"
    assert prompts == ["New password for alice: ", "Re-enter the password for alice: "]
    answers = iter(["pw", "other"])
    with pytest.raises(UsageError, match="the passwords entered for user alice do not match"):
        credentials.prompt_new_password("alice", prompt)
    answers = iter([""])
    with pytest.raises(UsageError, match="must not be empty"):
        credentials.prompt_new_password("alice", prompt)
