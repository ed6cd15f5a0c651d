"""ldmd start-up: argument checks, home and lock, create vs reuse, platform and name refusals."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from ldoms.daemon import main as ldmd
from ldoms.daemon.home import Home, HomeError, resolve_home
from ldoms.daemon.sockpath import MAX_SUN_PATH, bind_unix, connect_unix
from ldoms.errors import PlatformError, UsageError
from ldoms.model.domain import Domain, DomainConfig, DomainState
from ldoms.model.machine import Machine
from ldoms.model.platform import Platform
from ldoms.store import Store


@pytest.fixture(autouse=True)
def stand_in_factory_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for ldoms.binding.factory_default (the real one is another module's business)."""

    def factory_default(platform: Platform, host_name: str, *, seed: int | None = None) -> Machine:
        primary = Domain(
            config=DomainConfig(name="primary", uuid="u", hostid=0, mac=0), state=DomainState.ACTIVE
        )
        return Machine(host_name=host_name, platform=platform, domains=(primary,))

    monkeypatch.setattr("ldoms.binding.factory_default", factory_default, raising=False)


def args(**kw: str | None) -> argparse.Namespace:
    base: dict[str, str | None] = {"home": None, "platform": None, "name": None, "listen": None}
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8101", ("127.0.0.1", 8101)),
        ("[::1]:9000", ("::1", 9000)),
        ("host-2.example:1", ("host-2.example", 1)),
    ],
)
def test_listen_accepted(text: str, expected: tuple[str, int]) -> None:
    assert ldmd.parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("127.0.0.1", "expected ADDR:PORT"),
        ("127.0.0.1:0", "port 0 is not between 1 and 65535"),
        ("127.0.0.1:70000", "port 70000 is not between"),
        ("::1:80", "expected ADDR:PORT"),
        ("[zz]:80", "expected ADDR:PORT"),
        ("bad_host:80", "'bad_host' is neither an IP address nor a host name"),
    ],
)
def test_listen_refused(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ldmd.parse_listen(text)


def test_host_name_checked() -> None:
    assert ldmd.check_host_name("h1") == "h1"
    with pytest.raises(UsageError, match="invalid --name 'a b'"):
        ldmd.check_host_name("a b")


def test_home_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LDM_HOME", raising=False)
    assert resolve_home(None) == Path("~/.ldoms").expanduser()
    monkeypatch.setenv("LDM_HOME", str(tmp_path / "e"))
    assert resolve_home(None) == tmp_path / "e"
    assert resolve_home(str(tmp_path / "a")) == tmp_path / "a"


def test_home_is_0700_and_locked_once(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir(mode=0o755)
    home = Home(tmp_path / "h")
    home.prepare()
    assert stat.S_IMODE(os.stat(home.path).st_mode) == 0o700
    home.lock()
    other = Home(tmp_path / "h")
    with pytest.raises(HomeError, match=f"already served by another ldmd \\(pid {os.getpid()}\\)"):
        other.lock()
    home.unlock()
    other.lock()
    other.unlock()


def test_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(HomeError, match="cannot be prepared"):
        Home(tmp_path / "f").prepare()


def test_first_start_needs_a_platform(tmp_path: Path) -> None:
    home = Home(tmp_path)
    with pytest.raises(UsageError, match="holds no host yet: --platform is required"):
        ldmd.open_host(home, args())


def test_first_start_creates_then_later_starts_reuse(tmp_path: Path) -> None:
    home = Home(tmp_path)
    store, m, listen = ldmd.open_host(home, args(platform="t5240", name="h1", listen="127.0.0.1:9001"))
    store.close()
    assert (m.host_name, m.platform.name, listen) == ("h1", "t5240", "127.0.0.1:9001")
    assert m.control.started_at > 0  # the host "powered on" at creation
    store, m2, listen2 = ldmd.open_host(home, args())
    store.close()
    assert m2 == m and listen2 == listen
    store, _, listen3 = ldmd.open_host(home, args(platform="t5240", name="h1", listen="127.0.0.1:9002"))
    store.close()
    assert listen3 == "127.0.0.1:9002"
    assert Store(home.db).load().listen == "127.0.0.1:9002"


def test_default_listen_and_name(tmp_path: Path) -> None:
    store, m, listen = ldmd.open_host(Home(tmp_path), args(platform="t5240"))
    store.close()
    assert listen == ldmd.DEFAULT_LISTEN and m.host_name


def test_other_platform_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path)
    ldmd.open_host(home, args(platform="t5240", name="h1"))[0].close()
    with pytest.raises(
        PlatformError, match=r"holds host h1 on platform t5240 .*--platform t5140 .* is a different"
    ):
        ldmd.open_host(home, args(platform="t5140"))


def test_edited_custom_platform_is_refused(tmp_path: Path) -> None:
    from importlib.resources import files

    text = files("ldoms.model").joinpath("platforms", "t5240.toml").read_text()
    custom = tmp_path / "custom.toml"
    custom.write_text(text)
    home = Home(tmp_path / "h")
    home.prepare()
    ldmd.open_host(home, args(platform=str(custom), name="h1"))[0].close()
    ldmd.open_host(home, args(platform=str(custom)))[0].close()  # same file, same platform
    custom.write_text(text.replace("mhz = 1415", "mhz = 1165"))
    with pytest.raises(PlatformError, match="is a different platform"):
        ldmd.open_host(home, args(platform=str(custom)))


def test_other_name_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path)
    ldmd.open_host(home, args(platform="t5240", name="h1"))[0].close()
    with pytest.raises(UsageError, match="holds host h1; --name h2 differs"):
        ldmd.open_host(home, args(name="h2"))


def test_bad_listen_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    home = Home(tmp_path)
    with pytest.raises(UsageError, match="invalid --listen"):
        ldmd.open_host(home, args(platform="t5240", listen="nope"))
    assert not Store(home.db).has_host()


def test_main_reports_errors_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ldmd.main(["--home", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldmd: home ") and "--platform is required" in err and err.count("\n") == 1
    assert ldmd.main(["--home", str(tmp_path / "h"), "--platform", "nosuch"]) == 1
    assert "unknown platform 'nosuch'" in capsys.readouterr().err


def test_main_refuses_a_held_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = Home(tmp_path / "h")
    home.prepare()
    home.lock()
    try:
        assert ldmd.main(["--home", str(tmp_path / "h"), "--platform", "t5240"]) == 1
    finally:
        home.unlock()
    assert f"already served by another ldmd (pid {os.getpid()})" in capsys.readouterr().err


def test_unix_socket_with_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "ldmd.sock"
    assert len(str(path)) > MAX_SUN_PATH
    with bind_unix(path) as srv:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with connect_unix(path, timeout=5) as c:
            conn, _ = srv.accept()
            c.sendall(b"hi")
            assert conn.recv(2) == b"hi"
            conn.close()
