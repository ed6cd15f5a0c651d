"""GuestOps.restore (the target's hand-off to its standby guest): a guest that died because its memory
image's filesystem is full is named as such; any other failure is passed on as it was."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ldoms.daemon import migrate_guest
from ldoms.daemon.migrate_guest import GuestOps, filesystem_full, vcpu_state
from ldoms.errors import OpExecError
from ldoms.hv.control import GuestControlError
from ldoms.hv.supervisor import GuestSupervisor


class DeadControl:
    def restore(self, state: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        raise GuestControlError("ldg1", "restore", "the guest closed the connection without answering")


@pytest.fixture
def ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GuestOps:
    sup = GuestSupervisor(tmp_path / "guests", zygote=False)
    sup.dir.mkdir()
    monkeypatch.setattr(sup, "control", lambda name, timeout=2.0: DeadControl())
    return GuestOps(sup)


def statvfs_with(free: int) -> Any:
    real = os.statvfs

    def fake(path: Any) -> Any:
        st = real(path)

        class Full:
            f_frsize = st.f_frsize
            f_bavail = free // st.f_frsize

        return Full()

    return fake


def test_a_full_filesystem_is_named(ops: GuestOps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate_guest.os, "statvfs", statvfs_with(0))
    with pytest.raises(OpExecError) as e:
        ops.restore("ldg1", b'{"suspended_at": 1}')
    assert e.value.message == (
        f"The guest of LDom ldg1 died restoring its state: the filesystem of {ops.guests.dir} is full, so "
        "its memory image could not grow; free space there and try again"
    )


def test_other_failures_pass_unchanged(ops: GuestOps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate_guest.os, "statvfs", statvfs_with(1 << 30))
    with pytest.raises(GuestControlError, match="closed the connection without answering"):
        ops.restore("ldg1", b'{"suspended_at": 1}')


def test_filesystem_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not filesystem_full(tmp_path)
    assert not filesystem_full(tmp_path / "missing")  # unknown: not "full"
    monkeypatch.setattr(migrate_guest.os, "statvfs", statvfs_with(4096))
    assert filesystem_full(tmp_path)


def test_the_vcpu_state_must_be_a_json_object() -> None:
    assert vcpu_state("ldg1", b'{"steps": 7}') == {"steps": 7}
    with pytest.raises(OpExecError, match="the vCPU state of LDom ldg1 is not readable: Expecting value"):
        vcpu_state("ldg1", b"garbage")
    with pytest.raises(OpExecError, match=r"^the vCPU state of LDom ldg1 is not an object$"):
        vcpu_state("ldg1", b"[1, 2]")


def test_restore_refuses_an_unreadable_state_before_asking_the_guest(ops: GuestOps) -> None:
    with pytest.raises(OpExecError, match="the vCPU state of LDom ldg1 is not an object"):
        ops.restore("ldg1", b"7")
