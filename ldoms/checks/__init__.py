"""Migration requirement checks: pure rules over facts, each yielding every failure (SPEC §3).

The engine gathers `SourceFacts` on the source (`source_facts(machine, name, ...)`), runs
`run_source_checks(facts)`, sends the facts to the target in the CHECK message, and the target runs
`run_target_checks(facts, target_facts(machine))`.  Both return a `CheckReport` of failures and warnings.
"""

from ldoms.checks.facts import (
    GuestConditions,
    GuestProfile,
    MigrationMode,
    SourceFacts,
    TargetFacts,
    source_facts,
    target_facts,
)
from ldoms.checks.failure import CheckFailure, CheckReport, Code, Severity, Side
from ldoms.checks.registry import (
    SOURCE_RULES,
    TARGET_RULES,
    Rule,
    run_all_checks,
    run_source_checks,
    run_target_checks,
    source_rules,
    target_rules,
)

__all__ = [
    "SOURCE_RULES",
    "TARGET_RULES",
    "CheckFailure",
    "CheckReport",
    "Code",
    "GuestConditions",
    "GuestProfile",
    "MigrationMode",
    "Rule",
    "Severity",
    "Side",
    "SourceFacts",
    "TargetFacts",
    "run_all_checks",
    "run_source_checks",
    "run_target_checks",
    "source_facts",
    "source_rules",
    "target_facts",
    "target_rules",
]
