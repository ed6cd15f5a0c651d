"""Private configuration files: atomic writes, mode checks, the lock, the TOML writer."""

from __future__ import annotations

import os
import stat
import threading
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldoms.peer import files
from ldoms.peer.errors import PeerConfigError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_creates_private_file_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    old = os.umask(0)
    try:
        files.atomic_write(p, b"one")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"one"
    assert mode(p) == 0o600
    files.atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert [q.name for q in tmp_path.iterdir()] == ["x.toml"]  # no temporary file left behind


def test_atomic_write_failure_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PeerConfigError, match=r"cannot write .*/missing/x: no such file"):
        files.atomic_write(tmp_path / "missing" / "x", b"data")


def test_read_private_missing_is_none(tmp_path: Path) -> None:
    assert files.read_private(tmp_path / "none", what="thing") is None


def test_read_private_refuses_group_or_other_access(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"secret")
    p.chmod(0o640)
    with pytest.raises(
        PeerConfigError, match=r"thing .*/f must not be accessible by group or others \(mode 0640\)"
    ):
        files.read_private(p, what="thing")
    p.chmod(0o600)
    assert files.read_private(p, what="thing") == b"secret"


def test_read_private_refuses_directory_and_symlink(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    with pytest.raises(PeerConfigError, match="is not a regular file"):
        files.read_private(d, what="thing")
    target = tmp_path / "t"
    target.write_bytes(b"x")
    target.chmod(0o600)
    link = tmp_path / "l"
    link.symlink_to(target)
    with pytest.raises(PeerConfigError, match="cannot read thing"):
        files.read_private(link, what="thing")


def test_read_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    assert files.read_toml(p, what="conf") == {}
    files.atomic_write(p, b"a = 1\n")
    assert files.read_toml(p, what="conf") == {"a": 1}
    files.atomic_write(p, b"a = = 1\n")
    with pytest.raises(PeerConfigError, match=r"conf .*/c.toml is malformed"):
        files.read_toml(p, what="conf")
    files.atomic_write(p, b"a = '\xff'\n")
    with pytest.raises(PeerConfigError, match="is malformed"):
        files.read_toml(p, what="conf")


def test_config_lock_excludes_a_second_writer(tmp_path: Path) -> None:
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with files.config_lock(tmp_path):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)

    def second() -> None:
        with files.config_lock(tmp_path):  # flock on a separate open file description: blocks
            order.append("second in")

    t2 = threading.Thread(target=second)
    t2.start()
    release.set()
    t.join(10)
    t2.join(10)
    assert order == ["first in", "first out", "second in"]
    assert mode(tmp_path / files.LOCK_NAME) == 0o600


def test_config_lock_reports_unusable_home(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with (
        pytest.raises(PeerConfigError, match="cannot lock the configuration"),
        files.config_lock(blocker / "home"),
    ):
        pass


def test_toml_layout_is_readable() -> None:
    text = files.toml_dumps(
        {"trust": {"host_match": False}, "peers": {"host2": {"address": "192.0.2.7", "port": 6482}}},
        header="first line\n\nthird",
    )
    assert text.startswith("# first line\n#\n# third\n")
    assert "[trust]\nhost_match = false\n" in text
    assert '[peers.host2]\naddress = "192.0.2.7"\nport = 6482\n' in text


def test_toml_pem_is_a_literal_block() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    text = files.toml_dumps({"p": {"certificate": pem}})
    assert "certificate = '''\n-----BEGIN" in text
    assert tomllib.loads(text) == {"p": {"certificate": pem}}


def test_toml_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="cannot write a float"):
        files.toml_dumps({"a": 1.5})


_scalar = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text())
_key = st.text(min_size=1)


@given(st.dictionaries(_key, st.one_of(_scalar, st.dictionaries(_key, st.dictionaries(_key, _scalar)))))
def test_toml_round_trip(doc: dict[str, object]) -> None:
    assert tomllib.loads(files.toml_dumps(doc)) == doc
