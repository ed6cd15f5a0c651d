"""Hostile `-x` XML: the constraints reader in process, and `ldm add-domain -i FILE` against a real ldmd.

In process, Hypothesis mutates real `ldm list-constraints -x` documents (characters inserted, deleted or
replaced, elements dropped, duplicated or given hostile text) and feeds them to `constraints_from_xml` and to
`add-domain -i` on the realistic machines: a refusal is one clear `UsageError` line, an acceptance reads back
to the same definitions and keeps the binding invariants (`test_fuzz_verbs.attempt`).

Against a real ldmd, each classic XML attack (billion laughs, quadratic blowup, external entities naming a
file and a network address, DTDs, deep nesting, a huge attribute, oversized and non-UTF-8 files, a wrong
root, ...) must end with a non-zero exit, one clear line on stderr and nothing changed, within the deadline
the subprocess is given; the daemon must keep answering; an external entity must never be fetched (a local
TCP listener checks that no connection arrives, a secret file's text never shows up anywhere).
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from ldoms.errors import UsageError
from ldoms.model.xmlio import XML_MAX_BYTES, constraints_from_xml, constraints_to_xml
from tests.fuzz.conftest import (
    MACHINES,
    assert_clear_error,
    configured,
    daemon_answers,
    ldm_in_process,
    ldmd_alive,
    state_snapshot,
)
from tests.fuzz.test_fuzz_verbs import ODD_TEXT, attempt
from tests.integration.conftest import LdmHost


def documents() -> list[str]:
    """Real -x documents: each domain of the configured host alone, all of them together, and a guest
    renamed to a new name (what `add-domain -i` would accept)."""
    m = configured()
    docs = [constraints_to_xml([d.config]) for d in m.domains]
    docs.append(constraints_to_xml([d.config for d in m.domains]))
    g = m.domain("ldg3").config
    docs.append(constraints_to_xml([replace(g, name="fz1", uuid="", mac=0, hostid=0, vnets=(), vdisks=())]))
    return docs


DOCS = documents()
HOSTILE_TEXT = st.sampled_from(
    ["", " ", "-1", "0", "99999999999999999999999", "9" * 5000, "1G", "0x4000000", "a\nb", "&amp;", "é",
     "ldg1", "primary", "x" * 70, "\t", "00:14:4f:f8:00:00", "on", "true"]
) | ODD_TEXT  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> str:
    doc = draw(st.sampled_from(DOCS))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "text", "drop", "dup"]))
        lines = doc.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "insert":
            at = draw(st.integers(0, len(doc)))
            doc = (
                doc[:at]
                + draw(ODD_TEXT | st.sampled_from(["<", ">", "&", "</x>", "<x>", "]]>", "<!--"]))
                + doc[at:]
            )
        elif kind == "delete":
            at = draw(st.integers(0, len(doc)))
            doc = doc[:at] + doc[at + draw(st.integers(1, 40)) :]
        elif kind == "replace":
            at = draw(st.integers(0, max(0, len(doc) - 1)))
            doc = doc[:at] + draw(st.characters(codec="utf-8", exclude_categories=("Cs",))) + doc[at + 1 :]
        elif kind == "text" and (leaf := re.fullmatch(r"(\s*<[\w-]+>).*(</[\w-]+>)", lines[i])):
            value = draw(HOSTILE_TEXT).replace("&", "&amp;").replace("<", "&lt;")
            lines[i] = f"{leaf.group(1)}{value}{leaf.group(2)}"
            doc = "\n".join(lines)
        elif kind == "drop":
            del lines[i]
            doc = "\n".join(lines)
        elif kind == "dup":
            lines.insert(i, lines[i])
            doc = "\n".join(lines)
    return doc


# ------------------------------------------------------------------------------------------- in process
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(doc=mutated())
def test_mutated_documents_read_back_or_fail_clearly(doc: str) -> None:
    read_back_or_fail_clearly(doc)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(doc=mutated())
def test_mutated_documents_read_back_or_fail_clearly_long(doc: str) -> None:
    read_back_or_fail_clearly(doc)


def read_back_or_fail_clearly(doc: str) -> None:
    try:
        configs = constraints_from_xml(doc)
    except UsageError as e:
        assert_clear_error(e.message)
        return
    assert constraints_from_xml(constraints_to_xml(configs)) == configs


VERBS_WITH_I = st.sampled_from(["add-domain", "bind-domain", "start-domain", "set-domain"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(doc=mutated(), machine=st.sampled_from(sorted(MACHINES)), verb=VERBS_WITH_I)
def test_mutated_documents_through_the_operations(doc: str, machine: str, verb: str) -> None:
    attempt(MACHINES[machine](), verb, ["-i", doc])


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(doc=mutated(), machine=st.sampled_from(sorted(MACHINES)), verb=VERBS_WITH_I)
def test_mutated_documents_through_the_operations_long(doc: str, machine: str, verb: str) -> None:
    attempt(MACHINES[machine](), verb, ["-i", doc])


VALID = DOCS[-1]
ROOT_OPEN = '<LDM_interface version="1.0">'
assert ROOT_OPEN in VALID


def with_doctype(internal: str, doc: str = VALID) -> str:
    return doc.replace(ROOT_OPEN, f"<!DOCTYPE LDM_interface [\n{internal}\n]>\n{ROOT_OPEN}", 1)


def entity_in_name(doc: str, entity: str) -> str:
    return doc.replace("<ldom_name>fz1</ldom_name>", f"<ldom_name>{entity}</ldom_name>")


NS_ROOT, NS_END = '<x:LDM_interface xmlns:x="urn:x" version="1.0">', "</x:LDM_interface>"
LDOM = VALID[VALID.index("<ldom>") : VALID.index("</ldom>") + len("</ldom>")]
LAUGHS = "\n".join(
    ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
)
QUADRATIC = f'<!ENTITY a "{"x" * 50_000}">'


def attacks(secret_file: Path, port: int) -> dict[str, str | bytes]:
    """Name -> file contents of each classic attack (and a few plain malformations)."""
    url = f"http://127.0.0.1:{port}/evil"
    return {
        "billion-laughs": entity_in_name(with_doctype(LAUGHS), "&lol9;"),
        "quadratic-blowup": entity_in_name(with_doctype(QUADRATIC), "&a;" * 20_000),
        "external-file-entity": entity_in_name(
            with_doctype(f'<!ENTITY xxe SYSTEM "file://{secret_file}">'), "&xxe;"
        ),
        "external-network-entity": entity_in_name(with_doctype(f'<!ENTITY xxe SYSTEM "{url}">'), "&xxe;"),
        "external-parameter-entity": with_doctype(f'<!ENTITY % p SYSTEM "{url}"> %p;'),
        "external-dtd": VALID.replace(ROOT_OPEN, f'<!DOCTYPE LDM_interface SYSTEM "{url}">\n{ROOT_OPEN}'),
        "public-dtd": VALID.replace(ROOT_OPEN, f'<!DOCTYPE LDM_interface PUBLIC "-//x" "{url}">{ROOT_OPEN}'),
        "internal-dtd": with_doctype("<!ELEMENT LDM_interface ANY>"),
        "xinclude": VALID.replace(
            "<ldom>", f'<ldom><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{url}"/>', 1
        ),
        "deep-nesting": "<LDM_interface>" + "<a>" * 100_000 + "</a>" * 100_000 + "</LDM_interface>",
        "huge-attribute": VALID.replace('<data version="2.0">', f'<data version="{"A" * 900_000}">'),
        "huge-element-name": VALID.replace("<ldom>", f"<{'q' * 500_000}/><ldom>", 1),
        "too-large": VALID.replace("<ldom>", "<!--" + "c" * (XML_MAX_BYTES + 10) + "--><ldom>", 1),
        "too-large-for-the-api": "<!--" + "c" * (5 * 1024 * 1024) + "-->" + VALID,
        "invalid-utf8": VALID.replace("fz1", "fz\udcff1").encode("utf-8", "surrogateescape"),
        "utf16": VALID.encode("utf-16"),
        "wrong-root": "<?xml version='1.0'?><foo><bar/></foo>",
        "namespaced-root": VALID.replace(ROOT_OPEN, NS_ROOT).replace("</LDM_interface>", NS_END),
        "empty": "",
        "not-xml": "hello, world\n",
        "nul-reference": entity_in_name(VALID, "fz&#0;1"),
        "unclosed": VALID[: len(VALID) // 2],
        "two-roots": VALID + VALID.replace('<?xml version="1.0"?>', ""),
        "unknown-element": VALID.replace("<ldom>", "<ldom><bogus>1</bogus>", 1),
        "existing-domain": VALID.replace("fz1", "primary"),
        "same-domain-twice": VALID.replace("</ldom>", "</ldom>\n" + LDOM, 1),
    }  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "name", sorted(attacks(Path("/x"), 1)), ids=sorted(attacks(Path("/x"), 1))
)  # fmt: skip
def test_attacks_in_process(name: str) -> None:
    doc = attacks(Path("/nonexistent/secret"), 9)[name]
    try:
        text = doc.decode("utf-8") if isinstance(doc, bytes) else doc
    except UnicodeDecodeError:
        return  # ldm refuses to read such a file (end to end below)
    for machine in MACHINES.values():
        attempt(machine(), "add-domain", ["-i", text])
    if name in WELL_FORMED:
        return
    with pytest.raises(UsageError) as e:
        constraints_from_xml(text)
    assert_clear_error(e.value.message)


WELL_FORMED = {"existing-domain"}  # a valid document: add-domain refuses it, not the reader


# ------------------------------------------------------------------------------------------- a real ldmd
@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    """A TCP port that an external entity would be fetched from: nothing must ever connect."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    try:
        yield s
    finally:
        s.close()


def no_connection(s: socket.socket) -> None:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return
    conn.close()
    raise AssertionError("something connected to the external entity's address: an entity was fetched")


@pytest.fixture(scope="module")
def xml_host(ldmd_host: LdmHost) -> LdmHost:
    """The module's ldmd with room made, the services of the documents and a guest, so valid documents
    would be accepted: a refusal is then the document's fault."""
    h = ldmd_host
    h.make_room()
    for argv in (
        ("add-vds", "primary-vds0", "primary"),
        ("add-vdsdev", "/dev/dsk/c0t1d0s2", "vol1@primary-vds0"),
        ("add-vsw", "net-dev=e1000g0", "primary-vsw0", "primary"),
        ("add-domain", "ldg1"),
    ):
        h.ldm(*argv)
    return h


def test_valid_document_is_accepted(xml_host: LdmHost, tmp_path: Path) -> None:
    """The control experiment: the unmangled document is accepted (then removed)."""
    f = tmp_path / "ok.xml"
    f.write_text(VALID)
    xml_host.ldm("add-domain", "-i", str(f))
    assert "fz1" in xml_host.ldm("ls").stdout
    xml_host.ldm("remove-domain", "fz1")


def test_attacks_against_ldmd(xml_host: LdmHost, tmp_path: Path, listener: socket.socket) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-4f2a")
    before = state_snapshot(xml_host)
    for name, data in attacks(secret, listener.getsockname()[1]).items():
        f = tmp_path / f"{name}.xml"
        f.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        r = xml_host.ldm("add-domain", "-i", str(f), ok=False)  # the subprocess deadline bounds the time
        assert r.returncode != 0, f"{name}: accepted"
        assert_clear_error(r.stderr)
        assert r.stderr.endswith("\n") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert "TOP-SECRET" not in r.stderr + r.stdout, f"{name}: the secret file was read"
        no_connection(listener)
        daemon_answers(xml_host)
    ldmd_alive(xml_host)
    after = state_snapshot(xml_host)
    assert after == before
    assert "TOP-SECRET" not in after


def test_random_mutations_against_ldmd(xml_host: LdmHost, tmp_path: Path) -> None:
    _mutations_against_ldmd(xml_host, tmp_path, count=40, seed=1)


@pytest.mark.slow
def test_many_random_mutations_against_ldmd(xml_host: LdmHost, tmp_path: Path) -> None:
    _mutations_against_ldmd(xml_host, tmp_path, count=2000, seed=2)


def _mutations_against_ldmd(h: LdmHost, tmp_path: Path, *, count: int, seed: int) -> None:
    """Character-level mutations of the valid document through ldm: refused clearly, or accepted (and then
    removed again); either way the daemon answers and the host ends as it began."""
    rng = random.Random(seed)
    before = state_snapshot(h)
    names_before = set(_domains(h))
    for i in range(count):
        doc = VALID
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(doc))
            doc = (
                doc[:at]
                + rng.choice(["", "<", ">", "&", "x", "\x00", "é", "\n", "/", '"', "9"])
                + doc[at + rng.randint(0, 3) :]
            )
        f = tmp_path / f"m{i}.xml"
        f.write_text(doc, encoding="utf-8")
        rc, _, err = ldm_in_process(h, "add-domain", "-i", str(f))
        if rc != 0:
            assert_clear_error(err)
            assert err.count("\n") == 1
        else:
            for extra in set(_domains(h)) - names_before:
                assert ldm_in_process(h, "remove-domain", extra)[0] == 0
    ldmd_alive(h)
    assert state_snapshot(h) == before


def _domains(h: LdmHost) -> list[str]:
    out = ldm_in_process(h, "ls", "-p")[1]
    return [ln.split("|name=", 1)[1].split("|", 1)[0] for ln in out.splitlines() if ln.startswith("DOMAIN|")]
