"""Settling migrations that did not end cleanly: the error state (SPEC 4.3) and ldmd crashes.

The error state.  A source whose link died after it handed the complete domain over (FinalState, or
CommitRequest for a cold domain) keeps its copy, suspended, with flag `e`.  `ldm cancel-operation migration
NAME` settles it (`resolve_error`): the source asks the target how the migration ended, with a RecoveryQuery
on a fresh link authenticated by the recovery token both sides recorded in their journals (no password is
needed; the target stored only the token's hash).  If the target kept the domain (KEEP_TARGET: it runs
there), the copy here is destroyed; if it discarded it, or holds no journal of it, this copy is the master
again and resumes.  A target that cannot be reached leaves the error state as it is and says so: the answer
decides between one copy and two.  (Without a journal here at all, e.g. removed by hand, the admin is taken
to have checked the target, as SPEC 4.3's manual procedure says, and this copy resumes.)

Automatically.  `auto_recover` (a thread of the migration manager) does what `cancel-operation` does for
every source in the error state, without the admin: it waits `recovery_retry_min_s`, asks, and while the
target does not answer asks again at a doubling interval bounded by `recovery_retry_max_s`; a migration
that ends in the error state wakes it.  The test hook point `source:auto-recovery` can hold it back.

A copy that resumes gets back what the migration took: the strands of the 1.2 shrink (recorded in the
source's journal) and its full CPU time (the throttle is lifted).

Crashes.  Each side's journal says what to do (`Journal.recovery()`).  `recover_before_guests` runs before
ldmd's guest recovery (which kills unknown guests and removes their files): an incoming guest that was
already started is recorded as active, so it is re-attached; a standby guest that never got its state is
stopped, and an incoming image in the guests directory goes back to the staging area, to be started from.
`recover_after_start` then applies every unsettled decision and clears migration flags no journal explains.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from ldoms.errors import LdmError, OpExecError
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.migration.engine_common import depart_domain, drop_domain, put_domain
from ldoms.migration.engine_source import RECOVERY_USER_PREFIX, platform_facts
from ldoms.migration.events import (
    Abort,
    Auth,
    AuthResult,
    Decision,
    Hello,
    RecoveryAnswer,
    RecoveryQuery,
    Role,
)
from ldoms.migration.journal import JournalRecord, JournalStore
from ldoms.migration.live_target import image_survives
from ldoms.migration.protocol import MigrationConnection
from ldoms.migration.source_plane import unshrunk
from ldoms.migration.transport import ControlChannel
from ldoms.migration.wire import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from ldoms.model.domain import DomainState, MigrationRole
from ldoms.model.machine import Machine

if TYPE_CHECKING:
    from ldoms.daemon.migrate import MigrationManager

log = logging.getLogger("ldmd.migration.recovery")


def error_journal(journals: JournalStore, name: str) -> JournalRecord | None:
    """The latest source journal of `name` whose decision is the error state."""
    found = [
        r
        for r in journals.all()
        if r.journal.role is Role.SOURCE
        and r.journal.source_domain == name
        and r.journal.recovery() is Decision.SOURCE_ERROR
    ]
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------- the error state
def ask_target(manager: MigrationManager, rec: JournalRecord) -> Decision | None:
    """How the target says the migration of `rec` ended (None: it holds no journal of it)."""
    from ldoms.peer.link import connect_peer

    target = str(rec.extra.get("target") or rec.journal.peer)
    token = str(rec.extra.get("token", ""))
    policy = manager.policy
    link = connect_peer(manager.home, target, certificate_mode=False, timeout=policy.connect_s)
    conn = MigrationConnection(Role.SOURCE)
    chan = ControlChannel(link, conn, policy=policy)
    try:
        machine = manager.host.machine
        chan.send(
            Hello(
                role=Role.SOURCE,
                version=PROTOCOL_VERSION,
                min_version=MIN_PROTOCOL_VERSION,
                migration_id=uuid.uuid4().hex,
                host_name=machine.host_name,
                platform=platform_facts(machine),
            )
        )
        _expect(chan, Hello)
        chan.send(Auth(user=RECOVERY_USER_PREFIX + rec.journal.migration_id, password=token))
        result = _expect(chan, AuthResult)
        assert isinstance(result, AuthResult)
        if not result.ok:
            raise OpExecError(result.reason)
        chan.send(RecoveryQuery(migration_id=rec.journal.migration_id))
        answer = _expect(chan, RecoveryAnswer)
        assert isinstance(answer, RecoveryAnswer)
        log.info(
            "target %s on migration %s: %s (%s)",
            target, rec.journal.migration_id, answer.decision, answer.detail,
        )  # fmt: skip
        return answer.decision
    finally:
        chan.close()


def _expect(chan: ControlChannel, cls: type) -> object:
    ev = chan.receive()
    if isinstance(ev, Abort):
        raise OpExecError(ev.reason)
    if not isinstance(ev, cls):
        raise OpExecError(f"the target answered {type(ev).__name__} where {cls.__name__} was expected")
    return ev


def resolve_error(manager: MigrationManager, name: str) -> tuple[str, ...]:
    """`ldm cancel-operation migration NAME` for a source in the error state."""
    host = manager.host
    rec = error_journal(manager.journals, name)
    peer = str(rec.extra.get("target") or rec.journal.peer) if rec is not None else "the target"

    def claim(m: Machine) -> Machine:
        dom = m.domain(name)
        if dom.migration is not MigrationRole.ERROR or name in host.migrating:
            raise OpExecError(f"LDom {name} is no longer in the migration error state")
        host.migrating[name] = f"recovery of its migration to {peer} in progress"
        return m

    host.change(claim)
    try:
        decision: Decision | None = None
        if rec is not None:
            try:
                decision = ask_target(manager, rec)
            except LdmError as e:
                raise OpExecError(
                    f"Cannot learn from {peer} how the migration of LDom {name} ended: {e.message}. LDom "
                    f"{name} stays in the error state: try again once {peer} answers (if {name} runs "
                    f"there, this copy can also be removed by hand: ldm stop-domain -f, unbind-domain, "
                    "remove-domain)"
                ) from e
        if decision is Decision.KEEP_TARGET:
            _destroy_copy(manager, name)
            _settle(manager, rec, Decision.DESTROY_SOURCE)
            return (
                f"LDom {name} runs on {peer}: its migration had completed, so the copy on this host was "
                "removed",
            )
        _resume_copy(manager, name, rec)
        _settle(manager, rec, Decision.KEEP_SOURCE)
        return (f"Migration of LDom {name} cancelled: {peer} did not keep it; this copy is the master again",)
    finally:

        def release(m: Machine) -> Machine:
            host.migrating.pop(name, None)
            return m

        host.change(release)


def _settle(manager: MigrationManager, rec: JournalRecord | None, decision: Decision) -> None:
    if rec is not None:
        manager.journals.settle(rec, decision)


def _destroy_copy(manager: MigrationManager, name: str) -> None:
    dom = manager.host.machine.find(name)
    if dom is None:
        return
    if dom.state is DomainState.ACTIVE and not dom.config.is_control:
        manager.guests.destroy(name)
    manager.host.change(lambda m: replace(depart_domain(m, name), spconfig_modified=True))


def _resume_copy(manager: MigrationManager, name: str, rec: JournalRecord | None = None) -> None:
    dom = manager.host.machine.find(name)
    if dom is None:
        return
    if dom.state is DomainState.ACTIVE and manager.guests.running(name):
        for step, what in ((lambda: manager.guests.throttle(name, 0), "unthrottling"),
                           (lambda: manager.guests.resume(name), "resuming")):  # fmt: skip
            try:
                step()
            except LdmError as e:  # not suspended (an earlier attempt resumed it): no reason to stay in error
                log.warning("%s the guest of LDom %s: %s", what, name, e)
    shrunk = rec.extra.get("shrunk_from") if rec is not None else None
    strands = tuple(int(x) for x in shrunk) if isinstance(shrunk, list) else ()

    def clear(m: Machine) -> Machine:
        d = m.find(name)
        return m if d is None else put_domain(m, replace(unshrunk(d, strands), migration=MigrationRole.NONE))

    manager.host.change(clear)


# ---------------------------------------------------------------------------------------------- crashes
def recover_before_guests(machine: Machine, journals: JournalStore, guests: GuestSupervisor) -> Machine:
    """Keep incoming guests and images safe from the guest recovery that follows (see the docstring)."""
    for rec in journals.all():
        j = rec.journal
        if rec.settled or j.role is not Role.TARGET or _decision(rec) is not Decision.KEEP_TARGET:
            continue
        if not image_survives(rec.extra.get("boot_id")):
            continue  # the guest died with the host: the guest recovery reports the domain bound
        dom = machine.find(j.target_domain)
        if dom is None or dom.migration is not MigrationRole.TARGET:
            continue
        try:
            pid = guests.find(dom.name)
            if pid is not None and _standby(guests, dom.name):
                guests.kill(pid)  # it never got its state: the image is started from afresh below
                pid = None
            if pid is not None:
                machine = put_domain(machine, replace(dom, state=DomainState.ACTIVE, guest_pid=pid.pid))
                continue
            mem = guests.files(dom.name).mem
            staged = journals.image_path(j.migration_id)
            if mem.exists() and not staged.exists():
                mem.rename(staged)
            if dom.state is DomainState.ACTIVE:  # recorded active, guest gone: start it again from the image
                machine = put_domain(machine, replace(dom, state=DomainState.BOUND, guest_pid=0))
        except OSError as e:
            log.error("recovering the incoming LDom %s: %s", dom.name, e)
    return machine


def _standby(guests: GuestSupervisor, name: str) -> bool:
    """Whether the guest of `name` is an incoming guest still waiting for its state."""
    from ldoms.hv.control import GuestControlError

    try:
        return bool(guests.control(name).status().get("standby"))
    except GuestControlError:
        return False


# ------------------------------------------------------------------------------------ automatic recovery
def auto_recover(manager: MigrationManager) -> None:
    """Settle every source in the error state as soon as its target answers (see the module docstring)."""
    policy = manager.policy
    delay = policy.recovery_retry_min_s
    while not manager.stopping.is_set():
        errored = [
            d.name
            for d in manager.host.machine.domains
            if d.migration is MigrationRole.ERROR and d.name not in manager.host.migrating
        ]
        if not errored:
            manager.recovery_wake.wait(policy.recovery_retry_max_s)
            manager.recovery_wake.clear()
            delay = policy.recovery_retry_min_s
            continue
        if manager.stopping.wait(delay):
            return
        policy.hooks.at("source:auto-recovery", manager.stopping)
        answered = True
        for name in errored:
            if manager.stopping.is_set():
                return
            try:
                for line in resolve_error(manager, name):
                    log.info("automatic recovery: %s", line)
            except LdmError as e:
                answered = False
                log.warning("automatic recovery of LDom %s: %s (asking again in %g s)", name, e.message,
                            min(delay * 2, policy.recovery_retry_max_s))  # fmt: skip
            except Exception:
                answered = False
                log.exception("automatic recovery of LDom %s failed on a bug", name)
        delay = policy.recovery_retry_min_s if answered else min(delay * 2, policy.recovery_retry_max_s)


def _decision(rec: JournalRecord) -> Decision:
    """What the journal says to do; an incoming image held in memory does not survive a reboot."""
    decision = rec.journal.recovery()
    if decision is not Decision.KEEP_TARGET or rec.settled or image_survives(rec.extra.get("boot_id")):
        return decision
    if rec.extra.get("resumed"):  # it ran here and the source is gone: keep the domain (its guest died)
        return decision
    log.warning(
        "migration %s: the complete image of LDom %s was received before this host restarted; it was held "
        "in memory and is lost: the target discards it (the source keeps its copy)",
        rec.journal.migration_id, rec.journal.target_domain,
    )  # fmt: skip
    return Decision.DISCARD_TARGET


def recover_after_start(manager: MigrationManager) -> None:
    journals, host = manager.journals, manager.host
    explained: set[str] = set()
    for rec in journals.all():
        j = rec.journal
        name = j.source_domain if j.role is Role.SOURCE else j.target_domain
        if rec.settled:
            if j.decision is Decision.SOURCE_ERROR:
                explained.add(name)
            continue
        decision = _decision(rec)
        explained.add(name)
        log.warning(
            "migration %s (%s of LDom %s) was interrupted in phase %s: %s",
            j.migration_id, j.role, name, j.phase, decision,
        )  # fmt: skip
        try:
            _recover_one(manager, rec, decision, name)
        except Exception:
            log.exception("recovering migration %s failed; it stays as it is", j.migration_id)
    for dom in host.machine.domains:
        if dom.migration is not MigrationRole.NONE and dom.name not in explained:
            log.warning("LDom %s carried migration flag %s with no migration behind it: cleared", dom.name,
                        dom.migration)  # fmt: skip
            if dom.migration is MigrationRole.TARGET:
                manager.host.change(lambda m, n=dom.name: drop_domain(m, n))
            else:
                _resume_copy(manager, dom.name)


def _recover_one(manager: MigrationManager, rec: JournalRecord, decision: Decision, name: str) -> None:
    host, journals = manager.host, manager.journals
    j = rec.journal
    dom = host.machine.find(name)
    if decision is Decision.KEEP_SOURCE:
        if dom is not None and dom.migration is MigrationRole.SOURCE:
            _resume_copy(manager, name, rec)
    elif decision is Decision.SOURCE_ERROR:
        if dom is not None:
            host.change(lambda m: put_domain(m, replace(dom, migration=MigrationRole.ERROR)))
    elif decision is Decision.DESTROY_SOURCE:
        _destroy_copy(manager, name)
    elif decision is Decision.DISCARD_TARGET:
        if dom is not None and dom.migration is MigrationRole.TARGET:
            if manager.guests.running(name):
                manager.guests.destroy(name)
            manager.guests.memory_path(name).unlink(missing_ok=True)
            host.change(lambda m: drop_domain(m, name))
        journals.image_path(j.migration_id).unlink(missing_ok=True)
    elif decision is Decision.KEEP_TARGET and dom is not None and dom.migration is MigrationRole.TARGET:
        whole = image_survives(rec.extra.get("boot_id"))
        if j.mode is not None and j.mode.value == "active" and dom.state is not DomainState.ACTIVE and whole:
            state = str(rec.extra.get("cpu_state", "")).encode()
            rec_pid = manager.guests.start_incoming(dom, journals.image_path(j.migration_id), state)
            dom = replace(dom, state=DomainState.ACTIVE, guest_pid=rec_pid.pid)
        final = replace(dom, migration=MigrationRole.NONE)
        host.change(lambda m: replace(put_domain(m, final), spconfig_modified=True))
    journals.settle(rec, decision)
