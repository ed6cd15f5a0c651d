"""Phase 1 on the wire: the source's CheckRequest built from `SourceFacts`, read back safely by the target.

What travels (SPEC 3.2 [REC], "everything that defines the domain"):
- `domain_xml`: the constraints as `ldm list-constraints -x` prints them (`constraints_to_xml`), uuid, hostid
  and MACs included.  The target parses it with the hardened reader (`constraints_from_xml`: no DTDs, size
  and depth caps, strict schema, value rules), and that parsed config is the only definition it builds from;
- `runtime`: `{"v": 1, "facts": SourceFacts as JSON, ...extra}`: what the target's checks judge (source
  platform, the domain's state and bindings, guest profile and conditions) and what the engines agree on
  (`extra`: the recovery token, whether -f was given).

`read_check_request` refuses a request that does not make sense (a malformed document, facts of another
domain, a mode that is not the domain's state, memory blocks that are not whole aligned pages) with
`MalformedRequest`, whose message the target reports as a failure of the migration.  The config the target
will hold is the source config renamed to the target name; for a domain that will be bound there (bound or
active) the console settings are reset, since the console is re-created on the target with the domain's
name as its group and any free port (SPEC 3.1 Console).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from ldoms.checks.facts import SourceFacts
from ldoms.errors import LdmError, OpExecError
from ldoms.migration.events import CheckRequest, MigrationMode, thaw
from ldoms.model.codec import decode, to_json
from ldoms.model.domain import DomainConfig, DomainState, MemBinding, Vcons
from ldoms.model.xmlio import constraints_from_xml, constraints_to_xml
from ldoms.ops.common import check_name
from ldoms.units import PAGE_SIZE

RUNTIME_VERSION = 1
MAX_BLOCKS = 4096
_MAX_ADDR = 2**60


class MalformedRequest(OpExecError):
    code = "malformed-request"


def mode_of(state: DomainState) -> MigrationMode:
    return {
        DomainState.ACTIVE: MigrationMode.ACTIVE,
        DomainState.BOUND: MigrationMode.BOUND,
        DomainState.INACTIVE: MigrationMode.INACTIVE,
    }[state]


def build_check_request(
    facts: SourceFacts, *, target_domain: str, dry_run: bool, extra: dict[str, Any] | None = None
) -> CheckRequest:
    runtime: dict[str, Any] = {"v": RUNTIME_VERSION, "facts": to_json(facts), **(extra or {})}
    return CheckRequest(
        mode=mode_of(facts.state),
        dry_run=dry_run,
        source_domain=facts.name,
        target_domain=target_domain,
        domain_xml=constraints_to_xml([facts.domain.config]),
        runtime=runtime,
    )


@dataclass(frozen=True, slots=True)
class IncomingDomain:
    facts: SourceFacts  # as the source sent them, with the config parsed from the XML
    config: DomainConfig  # what the target will hold: renamed, console reset when it will be bound
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def blocks(self) -> tuple[MemBinding, ...]:
        b = self.facts.domain.bindings
        return b.mblocks if b is not None else ()


def _blocks_ok(blocks: tuple[MemBinding, ...]) -> None:
    if len(blocks) > MAX_BLOCKS:
        raise MalformedRequest(f"the source sent {len(blocks)} memory blocks (at most {MAX_BLOCKS})")
    for b in blocks:
        values = (b.ra, b.pa, b.size)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise MalformedRequest(f"memory block {values!r}: RA, PA and size must be integers")
        if b.size <= 0 or b.ra < 0 or b.pa < 0 or b.ra + b.size > _MAX_ADDR or b.pa + b.size > _MAX_ADDR:
            raise MalformedRequest(f"memory block RA {b.ra:#x} PA {b.pa:#x} size {b.size:#x} is out of range")
        if b.ra % PAGE_SIZE or b.size % PAGE_SIZE:
            raise MalformedRequest(f"memory block RA {b.ra:#x} size {b.size:#x} is not whole 8K pages")
    ordered = sorted(blocks, key=lambda b: b.ra)
    for a, b in itertools.pairwise(ordered):
        if a.ra + a.size > b.ra:
            raise MalformedRequest(f"memory blocks at RA {a.ra:#x} and {b.ra:#x} overlap")


def read_check_request(ev: CheckRequest) -> IncomingDomain:
    """The domain a CheckRequest describes, or MalformedRequest naming what is wrong."""
    runtime = thaw(ev.runtime)
    if not isinstance(runtime, dict) or runtime.get("v") != RUNTIME_VERSION:
        raise MalformedRequest(
            f"the source's facts are in format {runtime.get('v') if isinstance(runtime, dict) else '?'}; "
            f"this ldmd reads format {RUNTIME_VERSION}"
        )
    try:
        configs = constraints_from_xml(ev.domain_xml)
    except LdmError as e:
        raise MalformedRequest(f"the domain definition the source sent is not valid: {e}") from None
    if len(configs) != 1 or configs[0].name != ev.source_domain:
        raise MalformedRequest(f"the domain definition the source sent is not one domain {ev.source_domain}")
    try:
        facts = decode(SourceFacts, runtime["facts"])
        domain = replace(facts.domain, config=configs[0])
        facts = replace(facts, domain=domain, target_name=ev.target_domain)
        state = DomainState(domain.state)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedRequest(f"the source's facts are malformed: {type(e).__name__}: {e}") from None
    if mode_of(state) is not ev.mode:
        raise MalformedRequest(
            f"the request is for a {ev.mode} domain but LDom {ev.source_domain} is {state}"
        )
    if domain.bindings is not None:
        _blocks_ok(tuple(domain.bindings.mblocks))
    if state is DomainState.ACTIVE and (domain.bindings is None or not domain.bindings.mblocks):
        raise MalformedRequest(f"active LDom {ev.source_domain} comes without its memory blocks")
    try:
        check_name(ev.target_domain)
    except LdmError as e:
        raise MalformedRequest(str(e)) from None
    config = replace(configs[0], name=ev.target_domain)
    if state is not DomainState.INACTIVE and config.vcons is not None:
        config = replace(config, vcons=Vcons())
    extra = {k: v for k, v in runtime.items() if k not in ("v", "facts")}
    return IncomingDomain(facts=facts, config=config, extra=extra)
