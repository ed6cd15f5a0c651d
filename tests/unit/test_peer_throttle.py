"""The peer port's login throttle (ldoms/peer/throttle.py) and how credentials.authenticate uses it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ldoms.peer import credentials
from ldoms.peer.credentials import ScryptParams, client_address, throttle_for
from ldoms.peer.errors import LoginThrottled, PeerConfigError, WrongPassword
from ldoms.peer.files import atomic_write
from ldoms.peer.throttle import LoginThrottle, ThrottlePolicy, address_key

CHEAP = ScryptParams(n=2**4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(gate: LoginThrottle, times: int, user: str = "alice", address: str = "192.0.2.1") -> None:
    for _ in range(times):
        assert gate.admit(user, address) == 0.0


def test_policy_numbers_and_schedule() -> None:
    p = ThrottlePolicy()
    assert (p.free_failures, p.base_delay_s, p.max_delay_s, p.forget_s) == (5, 1.0, 60.0, 900.0)
    assert (p.max_entries, p.max_known) == (4096, 1024)
    assert [p.delay(k) for k in range(1, 13)] == [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert p.delay(10**9) == 60.0  # no overflow, still bounded


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"free_failures": -1}, "inconsistent delays"),
        ({"base_delay_s": 0}, "inconsistent delays"),
        ({"max_delay_s": 0.5}, "inconsistent delays"),
        ({"forget_s": 10}, "inconsistent bounds"),
        ({"max_entries": 0}, "inconsistent bounds"),
        ({"max_known": -1}, "inconsistent bounds"),
    ],
)
def test_policy_refusals(fields: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ThrottlePolicy(**fields)  # type: ignore[arg-type]


def test_back_off_after_the_free_failures() -> None:
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    fail(gate, 5)
    assert gate.admit("alice", "192.0.2.1") == 1.0  # refused: wait 1 s
    clock.now += 0.5
    assert gate.admit("alice", "192.0.2.1") == 0.5  # a refused attempt does not extend the wait
    clock.now += 0.5
    assert gate.admit("alice", "192.0.2.1") == 0.0  # the 6th failure ...
    assert gate.admit("alice", "192.0.2.1") == 2.0  # ... doubles it


def test_attempts_are_charged_before_their_result() -> None:
    """Parallel connections cannot all slip through before the first failure is known."""
    gate = LoginThrottle(clock=Clock())
    assert [gate.admit("alice", "192.0.2.1") for _ in range(6)] == [0, 0, 0, 0, 0, 1.0]


def test_success_refunds_and_resets() -> None:
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    fail(gate, 4)
    assert gate.admit("alice", "192.0.2.1") == 0.0
    gate.succeeded("alice", "192.0.2.1")
    fail(gate, 5)  # five free failures again


def test_counters_are_per_address_and_per_user() -> None:
    gate = LoginThrottle(clock=Clock())
    fail(gate, 5, "alice", "192.0.2.1")
    assert gate.admit("bob", "192.0.2.1") > 0  # the address is held back, whatever the name
    assert gate.admit("alice", "192.0.2.2") > 0  # the name is held back, whatever the address
    assert gate.admit("bob", "192.0.2.2") == 0.0  # neither


def test_counters_are_forgotten_after_a_quiet_while() -> None:
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    for _ in range(12):  # at the pace the back-off allows
        fail(gate, 1)
        clock.now += 60
    assert gate.admit("alice", "192.0.2.1") == 0.0  # bounded: 60 s after the last failure at most
    clock.now += 900
    fail(gate, 5)  # forgotten: five free failures again
    assert gate.admit("alice", "192.0.2.1") == 1.0


def test_a_known_address_is_not_held_back_by_the_user_counter() -> None:
    gate = LoginThrottle(clock=Clock())
    assert gate.admit("alice", "198.51.100.1") == 0.0
    gate.succeeded("alice", "198.51.100.1")
    fail(gate, 5, "alice", "203.0.113.7")  # a guesser elsewhere
    assert gate.admit("alice", "203.0.113.8") > 0
    assert gate.admit("alice", "198.51.100.1") == 0.0
    gate.succeeded("alice", "198.51.100.1")
    assert gate.admit("alice", "203.0.113.8") > 0  # the known address's login did not reset the user counter


def test_memory_is_bounded() -> None:
    gate = LoginThrottle(ThrottlePolicy(max_entries=3, max_known=2), clock=Clock())
    for i in range(10):
        assert gate.admit(f"user{i}", f"192.0.2.{i}") == 0.0
        gate.succeeded(f"user{i}", f"192.0.2.{i}")
        assert gate.admit(f"other{i}", f"198.51.100.{i}") == 0.0
    assert gate.sizes() == (3, 3, 2)
    assert gate.admit("x" * 10_000, "y" * 10_000) == 0.0  # keys are cut short
    assert LoginThrottle(ThrottlePolicy(max_known=0)).admit("a", "b") == 0.0


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("[2001:db8:1:2:3::9]", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
        ("", "?"),
    ],
)
def test_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key


@pytest.mark.parametrize(
    ("client", "address"),
    [
        ("192.0.2.9:4000", "192.0.2.9"),
        ("[2001:db8::1]:4000", "2001:db8::1"),
        ("peer 192.0.2.9:4000", "192.0.2.9"),
        ("peer hosta (192.0.2.9:4000)", "192.0.2.9"),
        ("peer hosta ([2001:db8::1]:4000)", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("", ""),
    ],
)
def test_client_addresses(client: str, address: str) -> None:
    assert client_address(client) == address


def test_each_home_has_its_own_throttle(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert throttle_for(a) is throttle_for(a) and throttle_for(a) is not throttle_for(b)
    first = throttle_for(tmp_path / "first")
    for i in range(100):
        throttle_for(tmp_path / f"h{i}")
    assert throttle_for(tmp_path / "first") is not first  # the registry is bounded too


def test_authenticate_refuses_and_logs_a_throttled_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    credentials.add_user(tmp_path, "alice", "s3cret", params=CHEAP)
    clock = Clock()
    gate = LoginThrottle(clock=clock)
    caplog.set_level(logging.INFO, logger="ldmd.peer.auth")
    for _ in range(5):
        with pytest.raises(WrongPassword):
            credentials.authenticate(
                tmp_path, "alice", "nope", host_name="h", client="peer 192.0.2.1:4000", throttle=gate
            )
    with pytest.raises(LoginThrottled) as refused:
        credentials.authenticate(
            tmp_path, "alice", "s3cret", host_name="h", client="peer 192.0.2.1:4000", throttle=gate
        )
    assert refused.value.code == "auth-throttled" and refused.value.retry_after == 1.0
    assert (
        "migration login refused from peer 192.0.2.1:4000: too many failed logins (user 'alice'; next "
        "attempt in 1 s)" in [r.getMessage() for r in caplog.records]
    )
    clock.now += 1
    credentials.authenticate(tmp_path, "alice", "s3cret", host_name="h", address="192.0.2.1", throttle=gate)
    assert gate.admit("alice", "192.0.2.1") == 0.0  # the success reset the address


def test_a_broken_users_file_is_not_counted(tmp_path: Path) -> None:
    atomic_write(credentials.users_path(tmp_path), b'users = "x"\n')
    gate = LoginThrottle(clock=Clock())
    for _ in range(10):
        with pytest.raises(PeerConfigError):
            credentials.authenticate(
                tmp_path, "alice", "pw", host_name="h", address="192.0.2.1", throttle=gate
            )
    assert gate.sizes() == (0, 0, 0)
