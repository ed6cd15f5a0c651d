"""What the migration engines ask of the guest runtime (ldoms.hv): the OS profile, suspend and resume, the
incoming start, destruction.  One small class, so engine tests can substitute it.

- `profile(dom)`: the guest's OS profile and conditions from its variables (`ldoms.hv.profile`); a value the
  guest itself would refuse counts as the default profile here (the variable is judged when the guest
  starts, not by the migration);
- `suspend(name)`: `GuestControl.suspend` (the guest stops at a step boundary) and its `state`, which the
  target's guest restores (`GuestSupervisor.start(..., incoming_state=state)`);
- `start_incoming(dom, image, state)`: the staging image becomes the guest's memory file (`NAME.mem`, a
  rename in the same home), then the guest starts from it and restores the state;
- `destroy(name)`: the guest stops (a suspended guest still serves signals) and its files go;
- live migration: `dirty_path` (the dirty map the source engine snapshots), `throttle` (auto-converge),
  `status` (the guest's measured dirty rate), `start_standby(dom)` (the target's guest maps the image being
  received and waits suspended) and `restore(name, state)` (it takes the state and runs; the answer is the
  downtime the guest measured), `pid`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ldoms.checks.facts import GuestConditions, GuestProfile
from ldoms.errors import LdmError, OpExecError
from ldoms.hv.files import PidRecord
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.domain import Domain

log = logging.getLogger("ldmd.migration.guest")

SUSPEND_TIMEOUT_S = 10.0  # a step is well under a millisecond; the guest may be busy starting up
RESTORE_TIMEOUT_S = 10.0  # a standby guest answers at once; a loaded machine may delay it


class GuestOps:
    def __init__(self, guests: GuestSupervisor) -> None:
        self.guests = guests

    def profile(self, dom: Domain) -> tuple[GuestProfile, GuestConditions]:
        from ldoms.hv.profile import guest_profile

        try:
            return guest_profile(dict(dom.config.variables))
        except LdmError as e:
            log.warning("LDom %s: %s; judging its migration with the default OS profile", dom.name, e)
            return GuestProfile(), GuestConditions()

    def memory_path(self, name: str) -> Path:
        return self.guests.files(name).mem

    def suspend(self, name: str) -> bytes:
        """Suspend the guest; its state, as bytes for FinalState.cpu_state."""
        answer = self.guests.control(name).suspend(timeout=SUSPEND_TIMEOUT_S)
        return json.dumps(answer.get("state", {}), sort_keys=True).encode()

    def resume(self, name: str) -> None:
        self.guests.control(name).resume()

    def start_incoming(self, dom: Domain, image: Path, cpu_state: bytes) -> PidRecord:
        state = vcpu_state(dom.name, cpu_state)
        mem = self.memory_path(dom.name)
        if image.exists():
            self.guests.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(image, mem)
        return self.guests.start(dom, incoming_state=state)

    def running(self, name: str) -> bool:
        return self.guests.find(name) is not None

    def destroy(self, name: str) -> None:
        """The copy a migration leaves behind (suspended, or a target's discarded standby): killed, not
        stopped gracefully, and not waited for (`GuestSupervisor.discard`)."""
        self.guests.discard(name)

    # ------------------------------------------------------------------ live migration
    def dirty_path(self, name: str) -> Path:
        return self.guests.files(name).dirty

    def throttle(self, name: str, percent: int) -> None:
        self.guests.control(name).throttle(percent)

    def status(self, name: str) -> dict[str, Any]:
        return self.guests.control(name).status()

    def start_standby(self, dom: Domain) -> PidRecord:
        return self.guests.start(dom, standby=True)

    def restore(self, name: str, cpu_state: bytes) -> float | None:
        state = vcpu_state(name, cpu_state)
        try:
            answer = self.guests.control(name).restore(state, timeout=RESTORE_TIMEOUT_S)
        except LdmError:
            if filesystem_full(self.guests.dir):
                # a write to a hole of the image on a full filesystem: SIGBUS killed the guest mid-answer
                raise OpExecError(
                    f"The guest of LDom {name} died restoring its state: the filesystem of {self.guests.dir} "
                    "is full, so its memory image could not grow; free space there and try again"
                ) from None
            raise
        downtime = answer.get("downtime")
        if isinstance(downtime, bool) or not isinstance(downtime, int | float):
            return None
        return float(downtime)

    def pid(self, name: str) -> int:
        rec = self.guests.find(name)
        if rec is None:
            raise OpExecError(f"the guest of LDom {name} is not running")
        return rec.pid


def vcpu_state(name: str, cpu_state: bytes) -> dict[str, Any]:
    """The guest state a FinalState carried (a JSON object), or a clear error naming the domain."""
    try:
        state: Any = json.loads(cpu_state)
    except ValueError as e:
        raise OpExecError(f"the vCPU state of LDom {name} is not readable: {e}") from None
    if not isinstance(state, dict):
        raise OpExecError(f"the vCPU state of LDom {name} is not an object")
    return state


def filesystem_full(directory: Path) -> bool:
    """Whether the filesystem of `directory` has not one free page left for a guest's memory."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024
