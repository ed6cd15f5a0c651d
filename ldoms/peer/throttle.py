"""Login rate limiting on the peer port: exponential back-off per source address and per user name.

Theory of operation.  Every password login asks `LoginThrottle.admit(user, address)` before the users file
or the password is looked at.  Two counters of failures apply to it, each with its own back-off:

* the **source address** (IPv4 as is, IPv6 by its /64, which one host usually owns entirely), so one
  attacker cannot guess fast whatever names he tries;
* the **user name**, so many addresses cannot share the guessing of one password between them.

An admitted attempt is charged as a failure at once (so eight parallel connections cannot all slip through
before the first failure is known) and refunded by `succeeded()`, which also forgets both counters.

Bursts of honest logins.  Charging before the result means that a sixth login from one address while five
are still being checked would be refused, though none failed: a source host that starts six migrations to
one target at once (evacuating a host) lost the sixth.  So an attempt is also counted *in flight* until it is
settled (`succeeded()`, or `failed()`), and a caller that passes `patience_s` to `admit` waits, instead of
being refused, for as long as a counter that refuses it still has attempts in flight (one of them may
succeed and reset it), up to `patience_s`; once they are all settled as failures it is refused as before.
Guessers gain nothing: no more attempts are admitted than before, only the refusal of the surplus waits
until it is certain.  After
`free_failures` failures a key waits `base_delay_s`, doubling with each further failure, up to
`max_delay_s`.  A refused attempt costs the target nothing (no scrypt) and is not counted: it does not
extend the wait, so a user who stops trying waits at most `max_delay_s` after his last failure.  Counters
not touched for `forget_s` are forgotten.

Not locking out the administrator.  An attacker elsewhere who keeps failing for user `alice` keeps the
user-name counter at its longest wait.  So that he cannot lock `alice` out for as long as he keeps going,
an address from which `alice` logged in since ldmd started is *known*: for it the user-name counter does
not apply (its own address counter still does).  A first login from a new address under such an attack
waits until the attacker pauses for `max_delay_s`; certificate mode (`migrate-domain -c`) is never
throttled, as it guesses nothing.

Memory is bounded: each table keeps at most `max_entries` keys (the least recently failed one is dropped
first) and `max_known` known (user, address) pairs.  The refusal names neither which counter refused nor
whether the user exists (both are counted the same way before the users file is read).

The numbers (`ThrottlePolicy`): 5 free failures, then 1 s doubling to 60 s, forgotten after 15 min without
a failure; 4096 keys per table, 1024 known pairs.  A single address, or all addresses together against one
user, gets at most one guess a minute once the back-off is at its bound (1440 a day), against several
hundred a minute without it.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    free_failures: int = 5  # failures allowed before any wait (typos)
    base_delay_s: float = 1.0  # the first wait, doubled at each further failure ...
    max_delay_s: float = 60.0  # ... up to this bound: the longest anyone waits after his last failure
    forget_s: float = 900.0  # a counter without a failure for this long starts again from zero
    max_entries: int = 4096  # keys per table (addresses; user names)
    max_known: int = 1024  # (user, address) pairs that logged in

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.base_delay_s <= 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError(f"login throttle: inconsistent delays in {self}")
        if self.forget_s < self.max_delay_s or self.max_entries < 1 or self.max_known < 0:
            raise ValueError(f"login throttle: inconsistent bounds in {self}")

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row."""
        if failures < self.free_failures:
            return 0.0
        return min(self.base_delay_s * 2.0 ** min(failures - self.free_failures, 60), self.max_delay_s)


@dataclass(slots=True)
class _Entry:
    failures: int = 0
    last: float = 0.0  # when the last failure was charged
    until: float = 0.0  # no attempt is admitted before this


class _Table:
    """Failure counters by key, least recently failed first, at most `cap` of them."""

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self._rows: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def wait(self, key: str, now: float) -> float:
        row = self._rows.get(key)
        if row is None:
            return 0.0
        if now - row.last >= self.policy.forget_s:
            del self._rows[key]
            return 0.0
        return max(0.0, row.until - now)

    def charge(self, key: str, now: float) -> None:
        row = self._rows.pop(key, None) or _Entry()
        row.failures += 1
        row.last = now
        row.until = now + self.policy.delay(row.failures)
        self._rows[key] = row  # most recent last
        while len(self._rows) > self.policy.max_entries:
            self._rows.popitem(last=False)

    def forget(self, key: str) -> None:
        self._rows.pop(key, None)


def address_key(address: str) -> str:
    """The key an address is counted under: an IPv4 address, the /64 of an IPv6 one (an IPv4-mapped one
    counts as IPv4), or the text itself when it is no address (bounded in length)."""
    text = address.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text[:64] or "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """The back-off state of one ldmd's peer port (thread-safe; see the module docstring)."""

    def __init__(
        self, policy: ThrottlePolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when an attempt in flight is settled
        self._in_flight: dict[str, int] = {}  # "a:KEY" / "u:KEY" -> attempts admitted and not yet settled
        self._addresses = _Table(self.policy)
        self._users = _Table(self.policy)
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()

    def admit(self, user: str, address: str, *, patience_s: float = 0.0) -> float:
        """0.0: the attempt may go on (it is charged as a failure until `succeeded`, and in flight until
        `succeeded` or `failed`); else the seconds to wait before the next attempt can be admitted.  With
        `patience_s`, an attempt refused only while attempts in flight may still succeed waits for them (at
        most that long, in real time) instead."""
        akey, ukey = address_key(address), user[:64]
        give_up = time.monotonic() + patience_s
        with self._lock:
            while True:
                now = self._clock()
                known = (ukey, akey) in self._known
                a_wait = self._addresses.wait(akey, now)
                u_wait = 0.0 if known else self._users.wait(ukey, now)
                wait = max(a_wait, u_wait)
                if wait <= 0:
                    break
                hopeful = (a_wait > 0 and self._in_flight.get("a:" + akey, 0) > 0) or (
                    u_wait > 0 and self._in_flight.get("u:" + ukey, 0) > 0
                )
                left = give_up - time.monotonic()
                if not hopeful or left <= 0:
                    return wait
                self._settled.wait(left)
            self._addresses.charge(akey, now)
            if not known:
                self._users.charge(ukey, now)
            for key in ("a:" + akey, "u:" + ukey):
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return 0.0

    def failed(self, user: str, address: str) -> None:
        """The admitted attempt failed: it stays charged; it is no longer in flight."""
        with self._lock:
            self._settle(address_key(address), user[:64])

    def _settle(self, akey: str, ukey: str) -> None:
        for key in ("a:" + akey, "u:" + ukey):
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)
        self._settled.notify_all()

    def succeeded(self, user: str, address: str) -> None:
        """The admitted attempt was right: forget the counters it was charged to (the address's; the user
        name's unless the pair was known already) and remember the pair as known."""
        akey, ukey = address_key(address), user[:64]
        with self._lock:
            self._settle(akey, ukey)
            self._addresses.forget(akey)
            if (ukey, akey) in self._known:
                del self._known[(ukey, akey)]  # re-inserted below as the most recent
            else:  # the attempt was charged to the user name too
                self._users.forget(ukey)
            if self.policy.max_known:
                self._known[(ukey, akey)] = None
                while len(self._known) > self.policy.max_known:
                    self._known.popitem(last=False)

    def sizes(self) -> tuple[int, int, int]:
        """(addresses, user names, known pairs) tracked: for tests of the memory bound."""
        with self._lock:
            return len(self._addresses), len(self._users), len(self._known)
