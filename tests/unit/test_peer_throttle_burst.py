"""Bursts of honest logins on the peer port (ldoms/peer/throttle.py, "Bursts of honest logins").

Found by tests/load/test_three_hosts.py: every attempt is charged as a failure until it succeeds, so a sixth
login from one address while five were still being checked was refused ("too many failed logins"), though
none had failed, and the sixth of several migrations started at once towards one host failed.  Now such a
login waits for the ones in flight; guessers still get no more attempts than before."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ldoms.peer import credentials
from ldoms.peer.credentials import ScryptParams
from ldoms.peer.errors import LoginThrottled
from ldoms.peer.throttle import LoginThrottle

CHEAP = ScryptParams(n=2**4)
ADDR = "192.0.2.1"


class Clock:
    """A fake clock that also says when a given thread has looked at it (it does so inside `admit`, under the
    throttle's lock, just before deciding whether to wait)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.watched: threading.Thread | None = None
        self.seen = threading.Event()

    def __call__(self) -> float:
        if threading.current_thread() is self.watched:
            self.seen.set()
        return self.now


def in_flight(gate: LoginThrottle, n: int) -> None:
    for _ in range(n):
        assert gate.admit("alice", ADDR) == 0.0


def waiting(gate: LoginThrottle, clock: Clock, call: object) -> tuple[threading.Thread, list[object]]:
    """Run `call()` in a thread; return once it is inside `admit` (then it waits, or has answered)."""
    out: list[object] = []

    def body() -> None:
        try:
            out.append(call())  # type: ignore[operator]
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=body, daemon=True)
    clock.watched = t
    t.start()
    assert clock.seen.wait(10)
    return t, out


def test_without_patience_a_burst_is_refused_as_before() -> None:
    gate = LoginThrottle(clock=Clock())
    in_flight(gate, 5)
    assert gate.admit("alice", ADDR) == 1.0


def test_a_login_behind_five_in_flight_waits_and_gets_in_when_one_succeeds() -> None:
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    in_flight(gate, 5)
    t, out = waiting(gate, clock, lambda: gate.admit("alice", ADDR, patience_s=30))
    gate.succeeded("alice", ADDR)  # under the lock: the waiter is in its wait (or refused: caught below)
    t.join(10)
    assert out == [0.0]


def test_it_is_refused_once_those_in_flight_all_failed() -> None:
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    in_flight(gate, 5)
    t, out = waiting(gate, clock, lambda: gate.admit("alice", ADDR, patience_s=30))
    for _ in range(4):
        gate.failed("alice", ADDR)
    assert t.is_alive() or out == []  # one is still in flight: it may yet succeed
    gate.failed("alice", ADDR)
    t.join(10)
    assert out == [1.0]  # as refused as without patience: no extra guess


def test_patience_is_bounded() -> None:
    gate = LoginThrottle(clock=Clock())
    in_flight(gate, 5)
    assert gate.admit("alice", ADDR, patience_s=0.05) == 1.0  # nobody settles: refused after the patience


def test_settled_failures_are_refused_at_once_whatever_the_patience() -> None:
    gate = LoginThrottle(clock=Clock())
    in_flight(gate, 5)
    for _ in range(5):
        gate.failed("alice", ADDR)
    assert gate.admit("alice", ADDR, patience_s=3600) == 1.0  # returns at once: nothing is in flight


def test_authenticate_waits_behind_logins_being_checked(tmp_path: Path) -> None:
    credentials.add_user(tmp_path, "alice", "s3cret", params=CHEAP)
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    in_flight(gate, 5)  # five logins from the same host being checked

    def login() -> None:
        credentials.authenticate(tmp_path, "alice", "s3cret", host_name="h", address=ADDR, throttle=gate)

    t, out = waiting(gate, clock, login)
    gate.succeeded("alice", ADDR)
    t.join(10)
    assert out == [None]  # logged in
    for _ in range(4):
        gate.succeeded("alice", ADDR)  # the other four honest logins
    # and a wrong password is settled as a failure (no attempt stays in flight)
    for _ in range(5):
        with pytest.raises(credentials.WrongPassword):
            credentials.authenticate(tmp_path, "alice", "nope", host_name="h", address=ADDR, throttle=gate)
    with pytest.raises(LoginThrottled):
        credentials.authenticate(tmp_path, "alice", "s3cret", host_name="h", address=ADDR, throttle=gate)
