"""`ldmd peer|trust|user|tls ...`: the admin subcommands, mounted on ldmd's own parser."""

from __future__ import annotations

import argparse
import datetime
import io
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ldoms.daemon import admin
from ldoms.daemon import main as ldmd
from ldoms.peer import credentials, tls, trust
from ldoms.peer.credentials import ScryptParams
from ldoms.peer.link import PeerLink
from ldoms.peer.listener import PeerListener

FP = ":".join(["AB"] * 32)


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "DEFAULT_SCRYPT", ScryptParams(n=16, r=1, p=1))


def parser() -> argparse.ArgumentParser:
    """ldmd's parser with the admin commands mounted, as the daemon's main does."""
    ap = ldmd.build_parser()
    admin.add_admin_commands(ap.add_subparsers(dest="command", metavar="COMMAND"))
    return ap


class Run:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.answers: list[str] = []

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        answers = iter(self.answers)
        console = admin.Console(out=out, err=err, prompt=lambda text: next(answers))
        args = parser().parse_args(["--home", str(self.home), *argv])
        rc = admin.run_admin(args, console)
        return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path / "home")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[tls.HostTls, int]]:
    """A listening host (its identity and port) for `peer add` to fetch a certificate from."""
    me = tls.ensure_host_tls(tmp_path / "target", "hostb", "127.0.0.1:6482")

    def handler(link: PeerLink) -> None:
        pass

    with PeerListener(tmp_path / "target", "127.0.0.1:0", handler) as lst:
        yield me, lst.address[1]


def make_cert(
    cn: str,
    *,
    ca: bool,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    csr: str | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed certificate, or one `issuer` signs for the key of `csr`."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key() if csr is None else x509.load_pem_x509_csr(csr.encode()).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer[1].subject)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key if issuer is None else issuer[0], hashes.SHA256())
    )
    return key, cert


def to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_home_before_or_after_the_subcommand(tmp_path: Path) -> None:
    ap = parser()
    a = ap.parse_args(["--home", "/x", "peer", "list"])
    b = ap.parse_args(["peer", "list", "--home", "/x"])
    assert a.home == b.home == "/x"
    assert ap.parse_args([]).command is None  # no subcommand: ldmd serves
    with pytest.raises(SystemExit):
        ap.parse_args(["peer"])  # an action is required


# ---------------------------------------------------------------------- peers
def test_peer_add_fetches_and_checks_the_certificate(run: Run, target: tuple[tls.HostTls, int]) -> None:
    me, port = target
    rc, out, err = run("peer", "add", "hostb", f"127.0.0.1:{port}", "--fingerprint", me.fingerprint().lower())
    assert (rc, err) == (0, "")
    assert out == f"Peer hostb added: 127.0.0.1:{port}, pinned to {me.fingerprint()}, certificate recorded\n"
    [peer] = trust.list_peers(run.home)
    assert peer.certificate == me.cert_der


def test_peer_add_refuses_a_fingerprint_the_peer_does_not_have(
    run: Run, target: tuple[tls.HostTls, int]
) -> None:
    me, port = target
    rc, out, err = run("peer", "add", "hostb", f"127.0.0.1:{port}", "--fingerprint", FP)
    assert rc == 1 and out == ""
    assert f"expected {FP}, the certificate's is {me.fingerprint()}" in err
    assert trust.list_peers(run.home) == []


def test_peer_add_unreachable_records_the_fingerprint_only(run: Run) -> None:
    port = closed_port()
    rc, out, err = run("peer", "add", "hostb", f"127.0.0.1:{port}", "--fingerprint", FP)
    assert rc == 0
    assert "could not fetch the certificate of hostb" in err and "connection refused" in err
    assert "certificate-mode migrations from hostb will be refused" in err
    assert out == f"Peer hostb added: 127.0.0.1:{port}, pinned to {FP}\n"
    assert trust.list_peers(run.home)[0].certificate is None


def test_peer_add_no_fetch_cert_file_and_no_pin(run: Run, tmp_path: Path) -> None:
    rc, out, _ = run("peer", "add", "hostb", "192.0.2.7", "--fingerprint", FP, "--no-fetch")
    assert (rc, out) == (0, f"Peer hostb added: 192.0.2.7:6482, pinned to {FP}\n")
    other = tls.ensure_host_tls(tmp_path / "c", "hostc", "127.0.0.1:1")
    pem = tmp_path / "hostc.pem"
    pem.write_text(other.cert_pem)
    rc, out, _ = run("peer", "add", "hostc", "[::1]:7000", "--cert", str(pem))
    assert (rc, out) == (
        0,
        f"Peer hostc added: [::1]:7000, pinned to {other.fingerprint()}, certificate recorded\n",
    )
    rc, out, _ = run("peer", "add", "hostd", "hostd.example:6482")
    assert (rc, out) == (
        0,
        "Peer hostd added: hostd.example:6482, no pin: its certificate must chain to a trusted CA\n",
    )
    rc, out, _ = run("peer", "list")
    lines = out.splitlines()
    assert re.split(r"\s+", lines[0]) == ["NAME", "ADDRESS", "CERT", "FINGERPRINT"]
    assert re.split(r"\s+", lines[1]) == ["hostb", "192.0.2.7:6482", "no", FP]
    assert re.split(r"\s+", lines[2]) == ["hostc", "[::1]:7000", "yes", other.fingerprint()]
    assert re.split(r"\s+", lines[3]) == ["hostd", "hostd.example:6482", "no", "-"]


def test_peer_add_refusals(run: Run, tmp_path: Path) -> None:
    assert run("peer", "add", "hostb", "192.0.2.7", "--no-fetch")[0] == 0
    rc, _, err = run("peer", "add", "hostb", "192.0.2.8", "--no-fetch")
    assert (rc, err) == (1, "ldmd: Peer hostb already exists: remove it first to change it\n")
    rc, _, err = run("peer", "add", "hostc", "192.0.2.7:0")
    assert rc == 2 and "port 0 is not between 1 and 65535" in err
    rc, _, err = run("peer", "add", "hostc", "h", "--cert", str(tmp_path / "missing.pem"))
    assert rc == 2 and err.startswith(f"ldmd: certificate file {tmp_path}/missing.pem cannot be read")
    rc, _, err = run("peer", "add", "bad_name", "h", "--fingerprint", FP, "--no-fetch")
    assert rc == 1 and "invalid peer name 'bad_name'" in err


def test_peer_remove(run: Run) -> None:
    run("peer", "add", "hostb", "192.0.2.7", "--no-fetch")
    assert run("peer", "remove", "hostb") == (0, "Peer hostb removed\n", "")
    assert run("peer", "remove", "hostb") == (1, "", "ldmd: Peer hostb not found\n")


# ---------------------------------------------------------------------- CAs
def test_trust_commands(run: Run, tmp_path: Path) -> None:
    _, ca = make_cert("Corp CA", ca=True)
    f = tmp_path / "ca.pem"
    f.write_bytes(to_pem(ca))
    rc, out, _ = run("trust", "add-ca", str(f))
    fp = trust.list_cas(run.home)[0].fingerprint
    assert (rc, out) == (0, f"Trusted CA Corp CA ({fp})\n")
    assert run("trust", "add-ca", str(f))[1] == f"Every CA in {f} is already trusted\n"
    assert run("trust", "host-match", "on") == (0, "host-match: on\n", "")
    rc, out, _ = run("trust", "list")
    assert out.splitlines()[1].split() == ["Corp", "CA", fp]
    assert out.splitlines()[-1] == "host-match: on"
    assert run("trust", "remove-ca", fp)[1] == f"CA Corp CA ({fp}) is no longer trusted\n"
    assert run("trust", "remove-ca", fp)[0] == 1
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(to_pem(make_cert("leaf", ca=False)[1]))
    rc, _, err = run("trust", "add-ca", str(leaf))
    assert rc == 1 and "leaf is not a CA certificate" in err


def test_host_match_value_is_checked(run: Run) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["trust", "host-match", "maybe"])
    with pytest.raises(Exception, match="invalid host-match 'maybe'"):
        admin.cmd_trust_host_match(run.home, "maybe", console=admin.Console())


# ---------------------------------------------------------------------- users
def test_user_add_prompts_twice(run: Run) -> None:
    run.answers = ["pw", "pw"]
    assert run("user", "add", "alice") == (0, "User alice added\n", "")
    credentials.authenticate(run.home, "alice", "pw", host_name="h")
    run.answers = ["pw", "other"]
    rc, _, err = run("user", "add", "bob")
    assert (rc, err) == (2, "ldmd: the passwords entered for user bob do not match\n")
    assert credentials.list_users(run.home) == ["alice"]


def test_user_add_from_a_password_file(run: Run, tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\nignored\n")
    f.chmod(0o600)
    assert run("user", "add", "alice", "--password-file", str(f))[0] == 0
    credentials.authenticate(run.home, "alice", "from-file", host_name="h")
    f.chmod(0o644)
    rc, _, err = run("user", "add", "bob", "--password-file", str(f))
    assert rc == 2
    assert err == f"ldmd: Password file {f} must not be accessible by group or others (mode 0644)\n"
    rc, _, err = run("user", "add", "9bad", "--password-file", str(f))
    assert rc == 2 and "invalid user name '9bad'" in err


def test_user_list_and_remove(run: Run) -> None:
    run.answers = ["a", "a", "b", "b"]
    run("user", "add", "zed")
    run("user", "add", "amy")
    assert run("user", "list") == (0, "amy\nzed\n", "")
    assert run("user", "remove", "zed") == (0, "User zed removed\n", "")
    assert run("user", "remove", "zed") == (1, "", "ldmd: User zed not found\n")


def test_interrupted_prompt(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(text: str) -> str:
        raise KeyboardInterrupt

    args = parser().parse_args(["--home", str(run.home), "user", "add", "alice"])
    err = io.StringIO()
    assert admin.run_admin(args, admin.Console(out=io.StringIO(), err=err, prompt=interrupt)) == 130
    assert err.getvalue() == "ldmd: interrupted\n"


# ---------------------------------------------------------------------- TLS identity
def make_host(home: Path, name: str = "hosta", listen: str = "127.0.0.1:7000") -> None:
    from ldoms.binding import factory_default
    from ldoms.model.platforms import load_platform
    from ldoms.store import Store

    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(home / "state.db")
    store.create_host(factory_default(load_platform("t5240"), name), listen=listen)
    store.close()


def test_tls_show_creates_the_identity_from_the_stored_host(run: Run) -> None:
    make_host(run.home)
    rc, out, _ = run("tls", "show")
    me = tls.load_host_tls(run.home)
    assert rc == 0
    assert out.splitlines()[0] == f"fingerprint: {me.fingerprint()}"
    assert "subject:     CN=hosta,O=ldoms" in out
    assert "names:       hosta, 127.0.0.1" in out
    rc, out, _ = run("tls", "show", "--pem")
    assert out == me.cert_pem


def test_tls_without_a_host(run: Run) -> None:
    rc, _, err = run("tls", "show")
    assert rc == 1 and "holds no host yet: start ldmd with --platform to create it" in err


def test_tls_csr_install_renew(run: Run, tmp_path: Path) -> None:
    make_host(run.home)
    rc, csr, _ = run("tls", "csr")
    assert rc == 0 and csr.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    ca_key, ca = make_cert("Test CA", ca=True)
    signed = tmp_path / "signed.pem"
    signed.write_bytes(to_pem(make_cert("hosta", ca=False, issuer=(ca_key, ca), csr=csr)[1]))
    rc, out, _ = run("tls", "install", str(signed))
    fp = tls.load_host_tls(run.home).fingerprint()
    assert (rc, out) == (
        0,
        f"Installed {signed}: fingerprint {fp} (peers that pinned the old one must re-pin)\n",
    )
    assert "issuer:      CN=Test CA" in run("tls", "show")[1]
    rc, out, _ = run("tls", "renew")
    new = tls.load_host_tls(run.home).fingerprint()
    assert rc == 0 and new != fp and out.startswith(f"New certificate: fingerprint {new}")
    rc, _, err = run("tls", "install", str(tmp_path / "none.pem"))
    assert rc == 2 and "cannot be read" in err


def test_host_facts(tmp_path: Path) -> None:
    make_host(tmp_path / "h", "hostz", "10.0.0.1:6482")
    assert admin.host_facts(tmp_path / "h") == ("hostz", "10.0.0.1:6482")
