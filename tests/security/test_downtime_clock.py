"""The downtime a migrated guest reports does not depend on the skew between the hosts' clocks
(SECURITY.md, "Known gaps", row 8, fixed).

The source's guest records its suspend time with its host's clock; the target's guest subtracts it from its
own first step's time.  The source ldmd estimates the target's clock offset from the Pong that answers its
last Ping before the suspend (the target stamps it with its wall clock) and moves the suspend time onto the
target's clock before it sends the state (`live_plan.clock_offset_s`, `live_plan.on_peer_clock`).  What is
left is half the round trip of that Ping, at most."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ldoms.hv.files import GuestFiles
from ldoms.hv.guest import Guest
from ldoms.migration.live_plan import clock_offset_s, on_peer_clock

SIZE = 1024 * 1024
SKEW_S = 3600.0  # the source's clock runs an hour ahead of the target's


def spec(**extra: object) -> dict[str, object]:
    return {"domain": "ldg1", "mblocks": [[0, SIZE]], "vcpus": 1, "variables": {}, **extra}


@pytest.mark.parametrize("skew", [SKEW_S, -SKEW_S])
def test_the_measured_downtime_does_not_depend_on_clock_skew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    monkeypatch.chdir(src_dir)  # a guest binds its control socket relative to its directory
    source = Guest(GuestFiles(Path("."), "ldg1"), spec())
    try:
        sent = time.time() + skew  # the source's clock: the Ping goes out ...
        target_now_us = int(time.time() * 1_000_000)  # ... the target stamps its Pong ...
        received = time.time() + skew  # ... and it comes back
        source.suspend()
        state = source.state()
    finally:
        source.close()
    state["suspended_at"] += skew  # the suspend instant, read on the source's clock
    offset = clock_offset_s(sent, received, target_now_us)
    assert offset is not None and abs(offset + skew) < 1.0
    state = json.loads(on_peer_clock(json.dumps(state).encode(), offset))
    (dst_dir / "ldg1.mem").write_bytes((src_dir / "ldg1.mem").read_bytes())  # the image, as received
    monkeypatch.chdir(dst_dir)
    target = Guest(GuestFiles(Path("."), "ldg1"), spec(incoming={"state": state}))
    try:
        target.resume_after_restore()
        assert target.downtime is not None and 0 <= target.downtime < 1.0
    finally:
        target.close()


def test_the_offset_is_the_midpoint_estimate() -> None:
    assert clock_offset_s(100.0, 100.2, 150_100_000) == pytest.approx(50.0)
    assert clock_offset_s(100.0, 100.2, None) is None  # a Pong without a time (an older peer)
    assert clock_offset_s(100.2, 100.0, 150_100_000) is None  # our clock stepped back meanwhile


def test_only_a_numeric_suspend_time_is_moved() -> None:
    state = json.dumps({"workload": "idle", "steps": 7, "suspended_at": 1.0}).encode()
    assert json.loads(on_peer_clock(state, 2.5)) == {"workload": "idle", "steps": 7, "suspended_at": 3.5}
    assert on_peer_clock(state, None) == state
    for other in (b"not json", b"[1, 2]", b'{"suspended_at": "noon"}', b'{"suspended_at": true}', b"{}"):
        assert on_peer_clock(other, 2.5) == other
