"""What a migration check reports: `CheckFailure` (an error or a warning) and the `CheckReport` of a run.

Failures are values, not exceptions, so that every rule runs and `ldm migrate-domain -n` prints every
problem at once.  Every field is a plain string (or a string enum) so a report travels in the migration
protocol through `ldoms.model.codec` unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Code(enum.StrEnum):
    """Stable identifiers of the rules, for scripts and tests (the message may be reworded, the code not)."""

    CONTROL_DOMAIN = "control-domain"
    SERVICE_DOMAIN = "service-domain"
    PHYS_IO = "phys-io"
    NAME_IN_USE = "name-in-use"
    MIGRATION_IN_PROGRESS = "migration-in-progress"
    DELAYED_RECONFIG = "delayed-reconfig"
    POWER_POLICY = "power-policy"
    FIRMWARE = "firmware"
    OS_COMPAT = "os-compat"
    OPENBOOT = "openboot"
    CPU_TYPE = "cpu-type"
    CPU_FREQ = "cpu-freq"
    STRANDS = "strands"
    WHOLE_CORE = "whole-core"
    CPU_DR = "cpu-dr"
    CRYPTO = "crypto"
    MEM_FREE = "mem-free"
    MEM_LAYOUT = "mem-layout"
    MEM_BLOCKS = "mem-blocks"
    VDS_SERVICE = "vds-service"
    VDISK_VOLUME = "vdisk-volume"
    VDSDEV_OPTIONS = "vdsdev-options"
    VSW = "vsw"
    VCC_PORT = "vcc-port"
    CONSOLE_GROUP = "console-group"
    MAC_COLLISION = "mac-collision"
    NIU_HYBRID = "niu-hybrid"
    INTERNAL = "internal"  # a rule itself failed: reported (fail closed) instead of hiding the other rules


class Side(enum.StrEnum):
    """Which machine found the problem (and, mostly, where it must be fixed)."""

    SOURCE = "source"
    TARGET = "target"


class Severity(enum.StrEnum):
    ERROR = "error"  # the migration is refused
    WARNING = "warning"  # printed; the migration goes ahead


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckFailure:
    """One problem found by one rule.

    `message` is the line ldm prints (LDoms' wording where the spec gives it; it may span lines exactly as
    LDoms wraps it).  `resource`, `observed`, `required` and `remedy` are for `-x`/XML output and logs:
    what object, what was found, what the rule wants, what the admin can do."""

    code: Code
    message: str
    side: Side
    resource: str = ""
    observed: str = ""
    required: str = ""
    remedy: str = ""
    severity: Severity = Severity.ERROR

    @property
    def is_warning(self) -> bool:
        return self.severity == Severity.WARNING


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckReport:
    """Every failure and warning of one run of the checks, in rule order."""

    failures: tuple[CheckFailure, ...] = ()
    warnings: tuple[CheckFailure, ...] = ()

    @classmethod
    def of(cls, results: Iterable[CheckFailure]) -> CheckReport:
        items = tuple(results)
        return cls(
            failures=tuple(f for f in items if not f.is_warning),
            warnings=tuple(f for f in items if f.is_warning),
        )

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def codes(self) -> frozenset[Code]:
        return frozenset(f.code for f in self.failures)

    def merged(self, other: CheckReport) -> CheckReport:
        """This report followed by `other` (source checks, then target checks)."""
        return CheckReport(failures=self.failures + other.failures, warnings=self.warnings + other.warnings)
