"""Recovery at ldmd start: make the stored state and the running guest processes agree.

The store says which domains are active; the guests directory says which guest processes exist.
- active in the store, guest alive (same pid, start time and command line): re-attach; uptime continues
  from the stored `started_at`;
- active in the store, guest gone: it died while ldmd was down; the domain is reported bound (logged);
- any other guest process of this home (found through /proc, pid file or not): its start was never
  committed (ldmd died between starting it and committing); it is killed, and its files removed.
The result is committed in one transaction.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ldoms.daemon.host import guest_gone, put_domain
from ldoms.hv.supervisor import GuestSupervisor
from ldoms.model.domain import DomainState
from ldoms.model.machine import Machine

log = logging.getLogger("ldmd.recovery")


def recover(machine: Machine, guests: GuestSupervisor, *, now: float) -> Machine:
    active = {d.name for d in machine.domains if d.state == DomainState.ACTIVE and not d.config.is_control}
    for dom in machine.domains:
        if dom.name not in active:
            continue
        rec = guests.find(dom.name)
        if rec is not None:
            log.info(
                "re-attached the guest of LDom %s: pid %d, active for %d s",
                dom.name,
                rec.pid,
                max(0, int(now - dom.started_at)),
            )
            if dom.guest_pid != rec.pid:
                machine = put_domain(machine, replace(dom, guest_pid=rec.pid))
        else:
            log.warning(
                "the guest of LDom %s (pid %d) died while ldmd was down: LDom %s is now bound",
                dom.name,
                dom.guest_pid,
                dom.name,
            )
            guests.files(dom.name).remove_all()
            machine = put_domain(machine, guest_gone(dom))
    attached = {d.name: d.guest_pid for d in machine.domains if d.state == DomainState.ACTIVE}
    for rec in guests.scan():
        if attached.get(rec.domain) != rec.pid:
            guests.kill(rec)
            log.warning(
                "killed the guest of LDom %s (pid %d): its start was never committed", rec.domain, rec.pid
            )
    for name in sorted(guests.names_with_files() - set(attached)):
        guests.files(name).remove_all()
        log.info("removed the leftover files of LDom %s's guest", name)
    return machine
