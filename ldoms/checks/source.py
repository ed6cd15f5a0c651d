"""Source-side rules: what the source machine can tell about the domain and itself (SPEC §3.1, §3.3, §1.4).

Each rule is a generator over `SourceFacts` yielding every `CheckFailure` it finds; rules never raise for a
failed requirement and never depend on each other.  Which rules run for which domain state and mode is
decided in `ldoms.checks.registry`.
"""

from __future__ import annotations

from collections.abc import Iterator

from ldoms.checks.compat import firmware_minimum_failure
from ldoms.checks.facts import MigrationMode, SourceFacts
from ldoms.checks.failure import CheckFailure, Code, Severity, Side

# 3.x wording, printed before the 1.2 CPU rules are applied to an older guest [3.x DOC].
NOT_LATEST_OS = (
    "Domain {name} is not running an operating system that is\n"
    "compatible with the latest migration functionality."
)


def _fail(code: Code, message: str, **kw: str) -> CheckFailure:
    return CheckFailure(code=code, message=message, side=Side.SOURCE, **kw)


def check_control_domain(src: SourceFacts) -> Iterator[CheckFailure]:
    if src.domain.config.is_control:
        yield _fail(
            Code.CONTROL_DOMAIN,
            f"LDom {src.name} is the control domain: the control domain cannot be migrated",
            resource=f"ldom {src.name}",
            observed="control domain",
            required="a guest domain",
        )


def check_service_domain(src: SourceFacts) -> Iterator[CheckFailure]:
    cfg = src.domain.config
    if cfg.is_control or not cfg.provides_services:
        return  # the control domain is reported once, by check_control_domain
    services = [f"vds {s.name}" for s in cfg.vds] + [f"vsw {s.name}" for s in cfg.vsw]
    services += [f"vcc {s.name}" for s in cfg.vcc]
    listed = ", ".join(services)
    yield _fail(
        Code.SERVICE_DOMAIN,
        f"LDom {src.name} provides virtual services ({listed}): a service domain cannot be migrated",
        resource=f"ldom {src.name}",
        observed=listed,
        required="no virtual services",
        remedy="move the services to another domain first",
    )


def check_physical_io(src: SourceFacts) -> Iterator[CheckFailure]:
    """I/O domains cannot be migrated, whatever their state (SPEC §3.1 Physical I/O, §3.2 PCIe)."""
    cfg = src.domain.config
    if cfg.is_control:
        return
    devs = [io.dev for io in cfg.io]
    b = src.domain.bindings
    if b is not None:
        devs += [d for d in b.io if d not in devs]
    if devs:
        listed = ", ".join(devs)
        yield _fail(
            Code.PHYS_IO,
            f"LDom {src.name} has physical I/O ({listed}): a domain with direct access to physical "
            "devices (an I/O domain) cannot be migrated",
            resource=f"ldom {src.name}",
            observed=listed,
            required="virtual I/O only",
            remedy=f"remove the devices with 'ldm remove-io <bus> {src.name}'",
        )


def check_already_migrating(src: SourceFacts) -> Iterator[CheckFailure]:
    flag = src.domain.migration.value
    if flag or src.name in src.migrations_in_progress:
        what = f" (migration flag: {flag})" if flag else ""
        yield _fail(
            Code.MIGRATION_IN_PROGRESS,
            f"LDom {src.name} is already being migrated{what}: only one migration of a domain at a time",
            resource=f"ldom {src.name}",
            observed=flag or "migrating",
            remedy="wait for it to end, or 'ldm cancel-operation migration " + src.name + "'",
        )


def check_source_delayed_reconfig(src: SourceFacts) -> Iterator[CheckFailure]:
    for name in src.delayed_reconfig:
        yield _fail(
            Code.DELAYED_RECONFIG,
            f"LDom {name} on {src.host_name} has a delayed reconfiguration pending: no migration can start "
            "while a delayed reconfiguration is active on the source or the target",
            resource=f"ldom {name}",
            observed="delayed reconfiguration pending",
            remedy=f"reboot {name}, or 'ldm cancel-operation reconf {name}'",
        )


def check_source_power_policy(src: SourceFacts) -> Iterator[CheckFailure]:
    if src.power_policy == "elastic":
        yield _fail(
            Code.POWER_POLICY,
            f"{src.host_name} uses the elastic power policy: migration is refused while either machine "
            "uses the elastic policy",
            resource=f"host {src.host_name}",
            observed="elastic",
            required="performance",
            remedy="set the power policy to performance on the service processor",
        )


def check_source_firmware(src: SourceFacts) -> Iterator[CheckFailure]:
    failure = firmware_minimum_failure(src.platform, src.host_name, src.mode)
    if failure is not None:
        message, observed, required = failure
        yield _fail(
            Code.FIRMWARE,
            message,
            resource=f"host {src.host_name}",
            observed=observed,
            required=required,
            remedy="upgrade the system firmware",
        )


# ---------------------------------------------------------------- active domains only
def check_guest_os(src: SourceFacts) -> Iterator[CheckFailure]:
    """The guest must support live migration; under 3.x an older guest falls back to the 1.2 CPU rules."""
    g = src.guest
    os_name = g.os_name or "the guest OS"
    if not g.live_migration:
        yield _fail(
            Code.OS_COMPAT,
            f"LDom {src.name} runs {os_name}, which does not support live migration: stop the domain and "
            "migrate it bound or inactive",
            resource=f"ldom {src.name}",
            observed=os_name,
            required="a guest OS that supports live migration",
            remedy=f"'ldm stop-domain {src.name}', then migrate it",
        )
    elif src.mode == MigrationMode.V3 and src.legacy_cpu_rules:
        yield CheckFailure(
            code=Code.OS_COMPAT,
            message=NOT_LATEST_OS.format(name=src.name),
            side=Side.SOURCE,
            severity=Severity.WARNING,
            resource=f"ldom {src.name}",
            observed=os_name if src.os_running else src.domain.softstate or "no OS running",
        )


def check_openboot(src: SourceFacts) -> Iterator[CheckFailure]:
    """A domain in OpenBoot or the kernel debugger cannot be shrunk: it needs a single virtual CPU."""
    n = src.strands
    if not src.os_running and n > 1:
        state = src.domain.softstate or "no OS running"
        yield _fail(
            Code.OPENBOOT,
            f"LDom {src.name} is not running an OS ({state}) and has {n} virtual CPUs: a domain in "
            "OpenBoot or the kernel debugger can be migrated only with a single virtual CPU",
            resource=f"ldom {src.name}",
            observed=f"{n} virtual CPUs, softstate '{state}'",
            required="1 virtual CPU, or the OS running",
            remedy=f"boot the OS, or 'ldm set-vcpu 1 {src.name}'",
        )


def check_cpu_dr_shrink(src: SourceFacts) -> Iterator[CheckFailure]:
    """Under the 1.2 rules the running guest is shrunk to one strand by CPU DR before the transfer."""
    n = src.strands
    if not src.legacy_cpu_rules or not src.os_running or n <= 1:
        return  # nothing to shrink (OpenBoot/kmdb domains are judged by check_openboot)
    prefix = f"LDom {src.name} cannot be shrunk to one strand for migration"
    if not src.guest.cpu_dr:
        yield _fail(
            Code.CPU_DR,
            f"{prefix}: its guest OS does not support CPU dynamic reconfiguration and it has {n} strands",
            resource=f"ldom {src.name}",
            observed=f"{n} strands, no CPU DR",
            required="1 strand, or a guest OS with CPU DR",
            remedy=f"'ldm stop-domain {src.name}', 'ldm set-vcpu 1 {src.name}', start it, then migrate",
        )
    c = src.conditions
    if c.bound_processes:
        yield _fail(
            Code.CPU_DR,
            f"{prefix}: {c.bound_processes} process(es) in the guest are bound to CPUs",
            resource=f"ldom {src.name}",
            observed=f"{c.bound_processes} bound process(es)",
            required="no process bound to a CPU",
            remedy="unbind them in the guest (pbind -u)",
        )
    if c.processor_sets:
        yield _fail(
            Code.CPU_DR,
            f"{prefix}: {c.processor_sets} processor set(s) are configured in the guest",
            resource=f"ldom {src.name}",
            observed=f"{c.processor_sets} processor set(s)",
            required="no processor set",
            remedy="remove them in the guest (psrset -d)",
        )


def check_crypto(src: SourceFacts) -> Iterator[CheckFailure]:
    """A CPU cannot leave a domain while its crypto unit is bound there, so a domain that must be shrunk
    cannot keep its MAUs: 1.2 refuses; 1.3+ removes and re-adds them when the guest has crypto DR."""
    m, n = src.maus, src.strands
    if not m:
        return
    if src.mode.at_least(MigrationMode.V1_3) and src.guest.crypto_dr:
        yield CheckFailure(
            code=Code.CRYPTO,
            message=f"LDom {src.name}: its {m} crypto unit(s) will be removed before the migration and added "
            "back afterwards, as far as the target has free units",
            side=Side.SOURCE,
            severity=Severity.WARNING,
            resource=f"ldom {src.name}",
            observed=f"{m} crypto unit(s)",
        )
    elif src.legacy_cpu_rules and n > 1:
        yield _fail(
            Code.CRYPTO,
            f"LDom {src.name} has {m} crypto unit(s) bound and {n} strands: it cannot be shrunk to one "
            "strand for migration while crypto units are bound",
            resource=f"ldom {src.name}",
            observed=f"{m} crypto unit(s), {n} strands",
            required="no crypto unit, or a single strand",
            remedy=f"'ldm set-mau 0 {src.name}' (or a guest OS with crypto DR under 1.3+)",
        )
