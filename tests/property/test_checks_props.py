"""Adding a violation never hides another: from a passing scenario, inject any subset of independent
violations (plus at most one of each group of alternatives) and every injected one must be reported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from ldoms.checks import Code


def _scenario() -> ModuleType:
    # The scenario builder lives with the unit tests; load it by path (tests/unit is not a package).
    name = "test_checks_scenario"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "unit" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


sc = _scenario()

injections = st.tuples(
    st.sets(st.sampled_from(sc.INDEPENDENT)),
    st.sampled_from((None, *sc.MEMORY)),
    st.sampled_from((None, *sc.GUEST_STATE)),
    st.permutations(range(len(sc.INDEPENDENT) + 2)),  # the order the edits are applied in
)


def test_base_scenario_passes() -> None:
    assert sc.World().report().ok


@settings(max_examples=150, deadline=None)
@given(injections)
def test_every_injected_violation_is_reported(case: tuple[set, object, object, list[int]]) -> None:  # type: ignore[type-arg]
    chosen, memory, guest_state, order = case
    picked = sorted(chosen, key=lambda v: v.name)
    picked += [v for v in (memory, guest_state) if v is not None]
    w = sc.World()
    for i in order:
        if i < len(picked):
            picked[i].apply(w)
    report = w.report()
    missing = [v.name for v in picked if not v.found_in(report)]
    assert not missing, (missing, [f.message for f in report.failures])
    assert Code.INTERNAL not in report.codes
    assert report.ok == (not picked)
