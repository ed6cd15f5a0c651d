"""The `hold` test hook the fault matrix drives ldmd with: it waits at its point until its file exists, a
cancel, or its bound; other points pass; the environment document carries it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ldoms.migration import transport
from ldoms.migration.transport import TestHooks


def test_a_hold_waits_for_its_file(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hooks = TestHooks.from_env({"LDMD_TEST_HOOKS": f'{{"hold": {{"source:round:2": "{gate}"}}}}'})
    assert hooks.hold == {"source:round:2": str(gate)}
    hooks.at("source:round:1")  # not held there: returns at once
    done = threading.Event()
    t = threading.Thread(target=lambda: (hooks.at("source:round:2"), done.set()))
    t.start()
    assert not done.wait(0.2)  # held
    gate.touch()
    assert done.wait(10)
    t.join()
    hooks.at("source:round:2")  # the gate is open now: passes


def test_a_cancel_or_the_bound_ends_a_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = TestHooks(hold={"p": str(tmp_path / "never")})
    cancelled = threading.Event()
    cancelled.set()
    hooks.at("p", cancelled)  # returns at once
    monkeypatch.setattr(transport, "HOLD_LIMIT_S", 0.05)
    hooks.at("p")  # the bound: returns after 50 ms, never held forever


def test_a_bad_hold_document_is_named() -> None:
    with pytest.raises(transport.OpExecError, match="LDMD_TEST_HOOKS is not a valid hooks document"):
        TestHooks.from_env({"LDMD_TEST_HOOKS": '{"hold": ["source:checks"]}'})
