"""`ldmd` administration subcommands: the host's peers, trusted CAs, migration users and TLS identity.

    ldmd [--home DIR] peer add NAME ADDR[:PORT] [--fingerprint FP | --cert FILE] [--no-fetch]
    ldmd [--home DIR] peer remove NAME
    ldmd [--home DIR] peer list
    ldmd [--home DIR] trust add-ca FILE | remove-ca FINGERPRINT | list | host-match on|off
    ldmd [--home DIR] user add NAME [--password-file FILE] | remove NAME | list
    ldmd [--home DIR] tls show [--pem] | csr | install FILE | renew

They work on the files of the home (see ldoms.peer.trust, .credentials, .tls) and may run while ldmd serves
the home: files are replaced atomically, writers take the home's configuration lock, and the running ldmd
reads them again at its next peer connection.  `--home` is accepted before or after the subcommand.

Each command is a function `cmd_*(home, ..., console)` usable without argparse; `add_admin_commands`
mounts them on ldmd's parser and `run_admin` runs the one parsed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ldoms.daemon.home import HOME_ENV, resolve_home
from ldoms.errors import LdmError, UsageError
from ldoms.peer import credentials, trust
from ldoms.peer.errors import PeerConfigError, PeerError
from ldoms.peer.target import DEFAULT_PORT, parse_address

PEER_FETCH_TIMEOUT = 5.0


@dataclass
class Console:
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    prompt: Callable[[str], str] = getpass.getpass

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        print(f"ldmd: {text}", file=self.err)


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be read: {(e.strerror or str(e)).lower()}") from None


# ---------------------------------------------------------------------- peers
def cmd_peer_add(
    home: Path,
    name: str,
    address: str,
    *,
    fingerprint: str | None = None,
    cert_file: str | None = None,
    fetch: bool = True,
    console: Console,
) -> trust.Peer:
    """Record a peer.  With only --fingerprint, the peer's certificate is fetched (when reachable) and must
    match: this catches a mistyped fingerprint, and lets this host accept certificate-mode migrations from
    the peer (the TLS server needs the certificate itself, not only its fingerprint)."""
    host, port = parse_address(address, default_port=DEFAULT_PORT)
    cert = None if cert_file is None else _read_file(cert_file, "certificate file")
    peer = trust.make_peer(name, host, port, fingerprint_text=fingerprint, certificate=cert)
    if peer.fingerprint is not None and peer.certificate is None and fetch:
        from ldoms.peer.link import fetch_certificate  # the TLS stack only when needed

        try:
            der = fetch_certificate(host, port, timeout=PEER_FETCH_TIMEOUT, name=name)
        except PeerError as e:
            console.note(
                f"could not fetch the certificate of {name} ({e}); recorded its fingerprint only: "
                f"certificate-mode migrations from {name} will be refused until its certificate is "
                "recorded (run this again when it is reachable, or use --cert FILE)"
            )
        else:
            peer = trust.make_peer(name, host, port, fingerprint_text=peer.fingerprint, certificate=der)
    trust.add_peer(home, peer)
    how = (
        "no pin: its certificate must chain to a trusted CA"
        if peer.fingerprint is None
        else f"pinned to {peer.fingerprint}" + (", certificate recorded" if peer.certificate else "")
    )
    console.say(f"Peer {name} added: {peer.address}, {how}")
    return peer


def cmd_peer_remove(home: Path, name: str, *, console: Console) -> None:
    trust.remove_peer(home, name)
    console.say(f"Peer {name} removed")


def cmd_peer_list(home: Path, *, console: Console) -> None:
    peers = trust.list_peers(home)
    rows = [("NAME", "ADDRESS", "CERT", "FINGERPRINT")]
    rows += [(p.name, p.address, "yes" if p.certificate else "no", p.fingerprint or "-") for p in peers]
    _table(rows, console)


def _table(rows: list[tuple[str, ...]], console: Console) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        console.say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------- CAs
def cmd_trust_add_ca(home: Path, path: str, *, console: Console) -> None:
    added = trust.add_ca(home, _read_file(path, "CA file"), what=f"CA file {path}")
    if not added:
        console.say(f"Every CA in {path} is already trusted")
    for ca in added:
        console.say(f"Trusted CA {ca.subject} ({ca.fingerprint})")


def cmd_trust_remove_ca(home: Path, fingerprint: str, *, console: Console) -> None:
    ca = trust.remove_ca(home, fingerprint)
    console.say(f"CA {ca.subject} ({ca.fingerprint}) is no longer trusted")


def cmd_trust_list(home: Path, *, console: Console) -> None:
    rows = [("SUBJECT", "FINGERPRINT")] + [(c.subject, c.fingerprint) for c in trust.list_cas(home)]
    _table(rows, console)
    console.say(f"host-match: {'on' if trust.host_match(home) else 'off'}")


def cmd_trust_host_match(home: Path, value: str, *, console: Console) -> None:
    if value not in ("on", "off"):
        raise UsageError(f"invalid host-match '{value}': expected on or off")
    trust.set_host_match(home, value == "on")
    console.say(f"host-match: {value}")


# ---------------------------------------------------------------------- users
def cmd_user_add(home: Path, name: str, *, password_file: str | None = None, console: Console) -> None:
    credentials.check_user_name(name)
    if password_file is not None:
        password = credentials.read_password_file(password_file)
    else:
        password = credentials.prompt_new_password(name, console.prompt)
    credentials.add_user(home, name, password)
    console.say(f"User {name} added")


def cmd_user_remove(home: Path, name: str, *, console: Console) -> None:
    credentials.remove_user(home, name)
    console.say(f"User {name} removed")


def cmd_user_list(home: Path, *, console: Console) -> None:
    for name in credentials.list_users(home):
        console.say(name)


# ---------------------------------------------------------------------- TLS identity
def host_facts(home: Path) -> tuple[str, str]:
    """(host name, listen address) of the host stored in the home: what its certificate names."""
    from ldoms.daemon.home import Home
    from ldoms.store import Store

    db = Home(home).db
    if not db.exists():
        raise PeerConfigError(f"home {home} holds no host yet: start ldmd with --platform to create it")
    store = Store(db)
    try:
        rec = store.load()
        return rec.machine.host_name, rec.listen
    finally:
        store.close()


def cmd_tls_show(home: Path, *, pem: bool = False, console: Console) -> None:
    from cryptography import x509

    from ldoms.peer import tls

    try:
        me = tls.load_host_tls(home)
    except PeerConfigError:
        me = tls.ensure_host_tls(home, *host_facts(home))
    if pem:
        console.say(me.cert_pem.rstrip("\n"))
        return
    cert = me.certificate
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = ", ".join(str(getattr(n, "value", n)) for n in san)
    except x509.ExtensionNotFound:
        names = "-"
    console.say(f"fingerprint: {me.fingerprint()}")
    console.say(f"subject:     {cert.subject.rfc4514_string()}")
    console.say(f"issuer:      {cert.issuer.rfc4514_string()}")
    console.say(f"names:       {names}")
    console.say(f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    console.say(f"certificate: {me.cert_path}")


def cmd_tls_csr(home: Path, *, console: Console) -> None:
    from ldoms.peer import tls

    name, listen = host_facts(home)
    tls.ensure_host_tls(home, name, listen)
    console.say(tls.certificate_request(home, name, listen).rstrip("\n"))


def cmd_tls_install(home: Path, path: str, *, console: Console) -> None:
    from ldoms.peer import tls

    me = tls.install_host_certificate(home, _read_file(path, "certificate file"), what=f"certificate {path}")
    console.say(
        f"Installed {path}: fingerprint {me.fingerprint()} (peers that pinned the old one must re-pin)"
    )


def cmd_tls_renew(home: Path, *, console: Console) -> None:
    from ldoms.peer import tls

    me = tls.renew_host_certificate(home, *host_facts(home))
    console.say(
        f"New certificate: fingerprint {me.fingerprint()} (peers that pinned the old one must re-pin)"
    )


# ---------------------------------------------------------------------- argparse
Runner = Callable[[Path, argparse.Namespace, Console], object]


def _leaf(
    group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, helptext: str, run: Runner
) -> argparse.ArgumentParser:
    p = group.add_parser(name, help=helptext, description=helptext)
    p.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help=f"the host's home directory (default: ${HOME_ENV}, else ~/.ldoms)",
    )
    p.set_defaults(admin=run)
    return p


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Mount `peer`, `trust`, `user` and `tls` on ldmd's subparsers."""
    peer = sub.add_parser("peer", help="hosts this host migrates domains to (name, address, pin)")
    pg = peer.add_subparsers(dest="peer_command", metavar="ACTION", required=True)
    p = _leaf(
        pg,
        "add",
        "record a peer; pin its certificate by fingerprint or file (without a pin it must be CA-signed)",
        lambda h, a, c: cmd_peer_add(
            h, a.name, a.address, fingerprint=a.fingerprint, cert_file=a.cert, fetch=not a.no_fetch, console=c
        ),
    )
    p.add_argument("name", help="the name used in `ldm migrate-domain ... NAME`")
    p.add_argument(
        "address", metavar="ADDR[:PORT]", help=f"its ldmd's peer address (default port {DEFAULT_PORT})"
    )
    p.add_argument(
        "--fingerprint", metavar="FP", help="SHA-256 fingerprint of its certificate (`ldmd tls show`)"
    )
    p.add_argument("--cert", metavar="FILE", help="its certificate, PEM or DER (`ldmd tls show --pem`)")
    p.add_argument("--no-fetch", action="store_true", help="with --fingerprint: do not fetch the certificate")
    p = _leaf(pg, "remove", "forget a peer", lambda h, a, c: cmd_peer_remove(h, a.name, console=c))
    p.add_argument("name")
    _leaf(pg, "list", "list the peers", lambda h, a, c: cmd_peer_list(h, console=c))

    tr = sub.add_parser("trust", help="certificate authorities trusted for peer certificates")
    tg = tr.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    p = _leaf(
        tg,
        "add-ca",
        "trust the CA certificate(s) of a PEM file",
        lambda h, a, c: cmd_trust_add_ca(h, a.file, console=c),
    )
    p.add_argument("file")
    p = _leaf(
        tg,
        "remove-ca",
        "stop trusting a CA",
        lambda h, a, c: cmd_trust_remove_ca(h, a.fingerprint, console=c),
    )
    p.add_argument("fingerprint")
    _leaf(tg, "list", "list the trusted CAs", lambda h, a, c: cmd_trust_list(h, console=c))
    p = _leaf(
        tg,
        "host-match",
        "with a CA: also require the target's name or IP in its certificate (default off)",
        lambda h, a, c: cmd_trust_host_match(h, a.value, console=c),
    )
    p.add_argument("value", choices=["on", "off"])

    us = sub.add_parser("user", help="users allowed to migrate domains into this host")
    ug = us.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    p = _leaf(
        ug,
        "add",
        "add a user; the password is asked twice, or read from the first line of a mode-0600 file",
        lambda h, a, c: cmd_user_add(h, a.name, password_file=a.password_file, console=c),
    )
    p.add_argument("name")
    p.add_argument("--password-file", metavar="FILE")
    p = _leaf(ug, "remove", "remove a user", lambda h, a, c: cmd_user_remove(h, a.name, console=c))
    p.add_argument("name")
    _leaf(ug, "list", "list the users", lambda h, a, c: cmd_user_list(h, console=c))

    tl = sub.add_parser("tls", help="this host's TLS identity")
    lg = tl.add_subparsers(dest="tls_command", metavar="ACTION", required=True)
    p = _leaf(
        lg,
        "show",
        "show the certificate and its fingerprint",
        lambda h, a, c: cmd_tls_show(h, pem=a.pem, console=c),
    )
    p.add_argument("--pem", action="store_true", help="print the certificate in PEM (for `peer add --cert`)")
    _leaf(
        lg,
        "csr",
        "print a certificate signing request for this host's key",
        lambda h, a, c: cmd_tls_csr(h, console=c),
    )
    p = _leaf(
        lg,
        "install",
        "install a certificate (e.g. CA-signed) for this host's key",
        lambda h, a, c: cmd_tls_install(h, a.file, console=c),
    )
    p.add_argument("file")
    _leaf(
        lg,
        "renew",
        "re-issue the self-signed certificate (new fingerprint)",
        lambda h, a, c: cmd_tls_renew(h, console=c),
    )


def run_admin(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run the admin command parsed into `args`: 0 on success, else print `ldmd: message` and return 2 for
    a usage error, 1 otherwise."""
    console = console or Console()
    home = resolve_home(getattr(args, "home", None))
    try:
        args.admin(home, args, console)
    except LdmError as e:
        console.note(e.message)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        console.note("interrupted")
        return 130
    return 0
