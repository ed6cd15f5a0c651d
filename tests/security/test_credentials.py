"""Passwords (SECURITY.md, "Passwords"): where they may appear, what a failed login tells, and the rate
limit.  Storage (scrypt, per-user salt, bounded parameters) and the constant-time comparison are checked
in tests/unit/test_peer_credentials.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldoms.daemon.api import MigrateBody
from ldoms.migration.events import Auth, AuthMethod
from ldoms.peer import credentials
from ldoms.peer.credentials import ScryptParams
from ldoms.peer.errors import AuthenticationFailed, LoginThrottled, UnknownUser, WrongPassword
from ldoms.peer.throttle import LoginThrottle, ThrottlePolicy

SECRET = "hunter2-but-longer"
CHEAP = ScryptParams(n=2**4)  # the rules do not depend on the cost; tests need not pay it


def test_passwords_are_never_part_of_a_repr() -> None:
    """Whatever logs or formats an event or an API body by its repr cannot leak the password."""
    auth = Auth(user="alice", method=AuthMethod.PASSWORD, password=SECRET)
    body = MigrateBody(operands=["ldg1", "alice@host2"], password=SECRET)
    assert SECRET not in repr(auth) and SECRET not in str(auth)
    assert SECRET not in repr(body) and SECRET not in str(body)


def test_an_unknown_user_costs_no_scrypt_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Documented choice: the answer names which half failed (unknown user / wrong password), so user names
    can be probed by anyone who reaches the peer port; the time taken says it too (no scrypt is run for an
    unknown user).  The password itself is still required and checked in constant time."""
    credentials.add_user(tmp_path, "alice", SECRET, params=CHEAP)
    runs: list[int] = []
    real = credentials.hashlib.scrypt
    monkeypatch.setattr(credentials.hashlib, "scrypt", lambda *a, **k: runs.append(1) or real(*a, **k))
    with pytest.raises(UnknownUser, match="unknown user"):
        credentials.authenticate(tmp_path, "mallory", SECRET, host_name="h")
    assert runs == []
    with pytest.raises(WrongPassword, match="wrong password"):
        credentials.authenticate(tmp_path, "alice", "guess", host_name="h")
    assert runs == [1]


def test_repeated_wrong_passwords_are_throttled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After `free_failures` (5) wrong passwords from one address, the next attempt is refused before the
    user's hash or the password is looked at (no scrypt), with a message that does not tell whether the user
    exists.  (The test once allowed 50 free guesses; the limit chosen is 5, which a typing administrator
    does not reach and a guesser does at once.)"""
    credentials.add_user(tmp_path, "alice", SECRET, params=CHEAP)
    free = ThrottlePolicy().free_failures
    for i in range(free):
        with pytest.raises(WrongPassword):
            credentials.authenticate(tmp_path, "alice", f"guess-{i}", host_name="h", client="192.0.2.9:4000")
    runs: list[int] = []
    real = credentials.hashlib.scrypt
    monkeypatch.setattr(credentials.hashlib, "scrypt", lambda *a, **k: runs.append(1) or real(*a, **k))
    with pytest.raises(AuthenticationFailed) as refused:  # refused before the password is even looked at
        credentials.authenticate(tmp_path, "alice", SECRET, host_name="h", client="192.0.2.9:4000")
    assert not isinstance(refused.value, WrongPassword) and isinstance(refused.value, LoginThrottled)
    assert runs == []
    assert str(refused.value) == (
        "Authentication refused for user alice on target host h: too many failed logins from this address or "
        "for this user; try again in 1 s"
    )
    assert refused.value.exit_code == 3


def test_a_throttled_refusal_does_not_tell_whether_the_user_exists(tmp_path: Path) -> None:
    """Unknown names are counted and refused exactly like existing ones, before the user is looked up."""
    credentials.add_user(tmp_path, "alice", SECRET, params=CHEAP)
    said: dict[str, str] = {}
    for user, client in (("alice", "192.0.2.9:1"), ("nobody-here", "192.0.2.10:1")):
        for i in range(ThrottlePolicy().free_failures):
            with pytest.raises(AuthenticationFailed):
                credentials.authenticate(tmp_path, user, f"guess-{i}", host_name="h", client=client)
        with pytest.raises(LoginThrottled) as refused:
            credentials.authenticate(tmp_path, user, "guess", host_name="h", client=client)
        said[user] = str(refused.value).replace(user, "USER")
    assert said["alice"] == said["nobody-here"]


def test_a_guesser_cannot_lock_the_administrator_out(tmp_path: Path) -> None:
    """The back-off is bounded (60 s after the last failure), refused attempts do not extend it, and an
    address the user logged in from before is not held back by failures for that user from elsewhere."""
    now = [0.0]
    gate = LoginThrottle(clock=lambda: now[0])
    credentials.add_user(tmp_path, "alice", SECRET, params=CHEAP)

    def login(password: str, address: str) -> None:
        credentials.authenticate(tmp_path, "alice", password, host_name="h", address=address, throttle=gate)

    login(SECRET, "198.51.100.1")  # the administrator's source host, known from now on
    for i in range(40):  # a guesser elsewhere keeps failing, at the pace the back-off allows
        now[0] += gate.policy.max_delay_s
        with pytest.raises(WrongPassword):
            login(f"guess-{i}", "203.0.113.7")
    with pytest.raises(LoginThrottled):  # a second address of his gets no extra guesses for alice
        login("guess", "203.0.113.8")
    login(SECRET, "198.51.100.1")  # the known address gets in at once
    with pytest.raises(LoginThrottled) as refused:  # a new address waits for the guesser's back-off ...
        login(SECRET, "192.0.2.55")
    assert refused.value.retry_after <= gate.policy.max_delay_s
    now[0] += gate.policy.max_delay_s  # ... which never exceeds 60 s after the last failure
    login(SECRET, "192.0.2.55")
