"""Target-side general rules: the target name, migrations and delayed reconfigurations in progress there,
its power policy and firmware (SPEC §1.4, §2.6, §3.1 Delayed reconfiguration / Power management / Other
later restrictions, §3.3, §7 items 5, 11, 12).
"""

from __future__ import annotations

from collections.abc import Iterator

from ldoms.checks.compat import firmware_downgrade, firmware_major, firmware_minimum_failure
from ldoms.checks.facts import SourceFacts, TargetFacts
from ldoms.checks.failure import CheckFailure, Code, Side

# 3.x wording [DOC, E56447 versionrestrictionsformigration] (the line break is LDoms' own).
FIRMWARE_FEATURES = (
    "Domain {name} is using features of the system firmware that are not supported in\n"
    "the version of the firmware running on the target machine."
)


def _fail(code: Code, message: str, **kw: str) -> CheckFailure:
    return CheckFailure(code=code, message=message, side=Side.TARGET, **kw)


def check_target_name(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    name = src.name_on_target
    if tgt.machine.find(name) is not None:
        yield _fail(
            Code.NAME_IN_USE,
            f"LDom {name} already exists on {tgt.host_name}: the migrated domain needs an unused name",
            resource=f"ldom {name}",
            observed="in use",
            remedy=f"migrate under another name ({tgt.host_name}:<new-name>) or remove that domain",
        )


def check_target_migrating(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    for name in dict.fromkeys((src.name_on_target, src.name)):
        if name in tgt.migrations_in_progress:
            yield _fail(
                Code.MIGRATION_IN_PROGRESS,
                f"A migration of LDom {name} is already in progress on {tgt.host_name}",
                resource=f"ldom {name}",
                observed="migrating",
                remedy="wait for it to end",
            )


def check_target_delayed_reconfig(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    for name in tgt.delayed_reconfig:
        yield _fail(
            Code.DELAYED_RECONFIG,
            f"LDom {name} on {tgt.host_name} has a delayed reconfiguration pending: no migration can start "
            "while a delayed reconfiguration is active on the source or the target",
            resource=f"ldom {name}",
            observed="delayed reconfiguration pending",
            remedy=f"reboot {name} on {tgt.host_name}, or 'ldm cancel-operation reconf {name}' there",
        )


def check_target_power_policy(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    if tgt.power_policy == "elastic":
        yield _fail(
            Code.POWER_POLICY,
            f"{tgt.host_name} uses the elastic power policy: migration is refused while either machine "
            "uses the elastic policy",
            resource=f"host {tgt.host_name}",
            observed="elastic",
            required="performance",
            remedy="set the power policy to performance on the service processor",
        )


def check_target_firmware(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    failure = firmware_minimum_failure(tgt.platform, tgt.host_name, src.mode)
    if failure is not None:
        msg, observed, required = failure
        yield _fail(
            Code.FIRMWARE,
            msg,
            resource=f"host {tgt.host_name}",
            observed=observed,
            required=required,
            remedy="upgrade the system firmware",
        )


def check_firmware_features(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Active: from firmware >= 8.4 (XCP2210) to older firmware the domain may use missing features."""
    s, t = src.platform.firmware, tgt.platform.firmware
    if firmware_downgrade(s, t):
        yield _fail(
            Code.FIRMWARE,
            FIRMWARE_FEATURES.format(name=src.name),
            resource="firmware",
            observed=f"{t} on {tgt.host_name}",
            required=f"at least the source's {s}",
            remedy="upgrade the target's system firmware",
        )


def check_firmware_family(src: SourceFacts, tgt: TargetFacts) -> Iterator[CheckFailure]:
    """Active: no live migration between system firmware 7.x and 8.x (or later) machines."""
    s, t = firmware_major(src.platform.firmware), firmware_major(tgt.platform.firmware)
    if s is None or t is None or s == t or 7 not in (s, t) or min(s, t) < 7:
        return
    yield _fail(
        Code.FIRMWARE,
        f"Cannot live-migrate LDom {src.name} between system firmware {src.platform.firmware} "
        f"({src.host_name}) and {tgt.platform.firmware} ({tgt.host_name}): 7.x and 8.x machines are not "
        "compatible for live migration",
        resource="firmware",
        observed=tgt.platform.firmware,
        required=f"{s}.x like the source",
        remedy="migrate the domain bound or inactive",
    )
