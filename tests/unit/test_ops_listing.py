"""The grammar of the listing verbs, and the alias table of every verb of this part."""

from __future__ import annotations

import pytest

from ldoms.binding import factory_default
from ldoms.errors import NotFoundError, UsageError
from ldoms.model.platforms import load_platform
from ldoms.ops.base import ALIASES, OpContext, Request, lookup, run
from ldoms.ops.listing import ListArgs

CTX = OpContext(now=1000.0, random_seed=7)
BASE = factory_default(load_platform("t5240"), "host1", seed=1)


def args(verb: str, *operands: str, **flags: object) -> ListArgs:
    req = Request(verb=verb, operands=operands, flags={f"-{k}": v for k, v in flags.items()})
    return lookup(verb).check_arguments(req)


@pytest.mark.parametrize(
    ("alias", "verb"),
    [
        ("ls", "list-domain"),
        ("list", "list-domain"),
        ("ls-dom", "list-domain"),
        ("list-dom", "list-domain"),
        ("create", "add-domain"),
        ("add-dom", "add-domain"),
        ("modify", "set-domain"),
        ("destroy", "remove-domain"),
        ("rm-dom", "remove-domain"),
        ("bind", "bind-domain"),
        ("unbind", "unbind-domain"),
        ("start", "start-domain"),
        ("stop", "stop-domain"),
        ("rm-vcpu", "remove-vcpu"),
        ("add-mem", "add-memory"),
        ("set-mem", "set-memory"),
        ("rm-mem", "remove-memory"),
        ("add-mau", "add-crypto"),
        ("set-mau", "set-crypto"),
        ("rm-mau", "remove-crypto"),
        ("rm-crypto", "remove-crypto"),
        ("rm-io", "remove-io"),
        ("cancel-op", "cancel-operation"),
        ("cancel-reconf", "remove-reconf"),
        ("add-config", "add-spconfig"),
        ("set-config", "set-spconfig"),
        ("rm-config", "remove-spconfig"),
        ("ls-config", "list-spconfig"),
        ("rm-spconfig", "remove-spconfig"),
        ("add-var", "add-variable"),
        ("set-var", "set-variable"),
        ("rm-var", "remove-variable"),
        ("ls-var", "list-variable"),
        ("ls-bindings", "list-bindings"),
        ("ls-constraints", "list-constraints"),
        ("ls-devices", "list-devices"),
        ("ls-services", "list-services"),
    ],
)
def test_aliases(alias: str, verb: str) -> None:
    lookup(alias)
    assert ALIASES[alias] == verb


def test_listings_change_nothing_and_check_names() -> None:
    for verb in ("list-domain", "list-bindings", "list-constraints", "list-services"):
        assert not lookup(verb).spec.mutates
        assert run(BASE, Request(verb=verb), CTX).machine is BASE
        assert run(BASE, Request(verb=verb, operands=("primary",)), CTX).machine is BASE
        with pytest.raises(NotFoundError, match="LDom ldg1 not found"):
            run(BASE, Request(verb=verb, operands=("primary", "ldg1")), CTX)
        with pytest.raises(UsageError):
            run(BASE, Request(verb=verb, flags={"-z": True}), CTX)
        with pytest.raises(UsageError):
            run(BASE, Request(verb=verb, operands=("9bad",)), CTX)


def test_list_domain_args() -> None:
    a = args("ls", "primary", "primary", l=True, p=True)
    assert a == ListArgs(names=("primary",), long=True, parseable=True)
    assert args("list", o="network,memory").formats == ("network", "memory")
    assert args("list", e=True).extended
    for bad in ("", "network,bogus", "network, memory"):
        with pytest.raises(UsageError):
            args("list", o=bad)


def test_list_constraints_args() -> None:
    assert args("list-constraints", x=True).xml
    assert args("ls-constraints", "primary", e=True, p=True).parseable
    with pytest.raises(UsageError, match="-x cannot be combined"):
        args("list-constraints", x=True, p=True)


def test_list_devices_args() -> None:
    assert args("list-devices", "mau", "mem", "cpu", "crypto", a=True, p=True) == ListArgs(
        names=("crypto", "memory", "cpu"), all=True, parseable=True
    )
    assert run(BASE, Request(verb="ls-devices", operands=("io",)), CTX).machine is BASE
    with pytest.raises(UsageError, match="Invalid device class 'disk'"):
        args("list-devices", "disk")
    with pytest.raises(UsageError):
        args("list-devices", e=True)


def test_list_bindings_and_services_flags() -> None:
    assert args("list-bindings", e=True, p=True) == ListArgs(extended=True, parseable=True)
    assert args("list-services", "primary", p=True).names == ("primary",)
    with pytest.raises(UsageError):
        args("list-services", l=True)
