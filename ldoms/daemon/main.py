"""`ldmd`: the Logical Domains Manager daemon for one host (its home directory).

Start-up order matters for crash safety: lock the home (one ldmd per home), open the store, create the host
at factory default or load it (refusing another platform or name), settle interrupted migrations and recover
guests (re-attach, kill orphans), make sure the host has its TLS identity and listen for peers (migrations),
and only then bind the control socket, so an `ldm` that connects always meets a consistent host.
Foreground; SIGTERM or SIGINT stop the server cleanly; guests keep running (they are in their own sessions).

    ldmd [--home DIR] [--platform P] [--name N] [--listen ADDR:PORT] [--no-incoming-migrations]
         [--migration-defaults KNOBS]
    ldmd [--home DIR] peer|trust|user|tls ...       administration (ldoms.daemon.admin); no home lock
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ldoms.daemon.home import HOME_ENV, Home, resolve_home
from ldoms.daemon.host import put_domain
from ldoms.errors import LdmError, PlatformError, UsageError
from ldoms.model.machine import Machine
from ldoms.store import Store, platform_doc

if TYPE_CHECKING:
    from ldoms.daemon.host import Host
    from ldoms.peer.listener import PeerListener

log = logging.getLogger("ldmd")

DEFAULT_LISTEN = "0.0.0.0:6482"  # every address, on the LDoms manager's port (SPEC 2.5)
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def parse_listen(text: str) -> tuple[str, int]:
    """'ADDR:PORT' or '[IPv6]:PORT' -> (addr, port); ADDR is an IP address or a host name."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if not m:
        raise UsageError(f"invalid --listen '{text}': expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
    addr = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid --listen '{text}': port {port} is not between 1 and 65535")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        if m.group(1) or not _HOSTNAME_RE.fullmatch(addr):
            raise UsageError(
                f"invalid --listen '{text}': '{addr}' is neither an IP address nor a host name"
            ) from None
    return addr, port


def check_host_name(name: str) -> str:
    if not _HOSTNAME_RE.fullmatch(name):
        raise UsageError(f"invalid --name '{name}': a host name holds letters, digits, '-' and '.' only")
    return name


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ldmd",
        description="Logical Domains Manager daemon: serves one host (a home directory) to ldm. Runs in the "
        "foreground; SIGTERM stops it cleanly and leaves the guests running.",
    )
    ap.add_argument(
        "--home",
        help=f"the host's home directory (default: ${HOME_ENV}, else ~/.ldoms); created with mode 0700",
    )
    ap.add_argument(
        "--platform",
        help="platform preset name (e.g. t5240) or path of a platform TOML file: required the first time "
        "(creates the host at factory default); later optional, and it must match the stored platform",
    )
    ap.add_argument(
        "--name",
        help="the host's name: used the first time (default: this machine's host name); later optional, "
        "and it must match the stored name",
    )
    ap.add_argument(
        "--listen",
        help=f"ADDR:PORT where this host's TLS listener takes migrations from peers (default the first time: "
        f"{DEFAULT_LISTEN}, the LDoms manager's port 6482; IPv6 as [ADDR]:PORT); stored, so later starts "
        "may omit it.  Sources reach it as `ldmd peer add NAME ADDR:PORT` names it",
    )
    ap.add_argument(
        "--migration-defaults",
        metavar="KNOBS",
        help="the host's live-migration defaults, e.g. 'max-downtime=300ms,bandwidth=1G,auto-converge=on,"
        "max-time=10m,max-rounds=30' (stored in the home, so later starts may omit it; '' restores the "
        "built-in defaults); `ldm migrate-domain NAME=VALUE ...` overrides them for one migration",
    )
    ap.add_argument(
        "--no-incoming-migrations",
        action="store_true",
        help="refuse every incoming migration (a source gets a clear refusal); outgoing ones still work",
    )
    return ap


def full_parser() -> argparse.ArgumentParser:
    """ldmd's parser with the administration subcommands mounted (`ldmd peer|trust|user|tls ...`)."""
    from ldoms.daemon import admin

    ap = build_parser()
    admin.add_admin_commands(ap.add_subparsers(dest="command", metavar="COMMAND"))
    return ap


def open_host(home: Home, args: argparse.Namespace) -> tuple[Store, Machine, str]:
    """The host's store and machine: created at factory default on first start, else loaded and checked."""
    store = Store(home.db)
    try:
        if args.listen is not None:
            parse_listen(args.listen)
        if getattr(args, "migration_defaults", None):
            from ldoms.migration.precopy_knobs import parse_knobs

            parse_knobs(args.migration_defaults)  # refused before anything is created or changed
        if not store.has_host():
            return store, *_create(store, home, args)
        rec = store.load()
        stored = rec.machine
        if args.name is not None and args.name != stored.host_name:
            raise UsageError(
                f"home {home.path} holds host {stored.host_name}; --name {args.name} differs "
                "(a host cannot be renamed: omit --name or use another home)"
            )
        if args.platform is not None:
            from ldoms.model.platforms import load_platform

            wanted = load_platform(args.platform)
            if platform_doc(wanted) != platform_doc(stored.platform):
                raise PlatformError(
                    f"home {home.path} holds host {stored.host_name} on platform {stored.platform.name} "
                    f"({stored.platform.model}); --platform {args.platform} ({wanted.model}) is a different "
                    "platform: omit --platform or use another home"
                )
        _store_migration_defaults(store, args)
        listen = rec.listen
        if args.listen is not None and args.listen != listen:
            store.set_listen(args.listen)
            log.info("listen address changed from %s to %s", listen, args.listen)
            listen = args.listen
        return store, stored, listen
    except BaseException:
        store.close()
        raise


def _store_migration_defaults(store: Store, args: argparse.Namespace) -> None:
    text = getattr(args, "migration_defaults", None)
    if text is None:
        return
    from ldoms.daemon.migrate import DEFAULTS_SETTING
    from ldoms.migration.precopy_knobs import format_knobs, parse_knobs

    if not text.strip():
        store.set_setting(DEFAULTS_SETTING, None)
        log.info("migration defaults reset to the built-in ones")
        return
    policy = parse_knobs(text)  # UsageError names the bad knob
    store.set_setting(DEFAULTS_SETTING, format_knobs(policy))
    log.info("migration defaults: %s", format_knobs(policy))


def _create(store: Store, home: Home, args: argparse.Namespace) -> tuple[Machine, str]:
    if args.platform is None:
        raise UsageError(f"home {home.path} holds no host yet: --platform is required to create one")
    from ldoms.binding import factory_default
    from ldoms.model.platforms import load_platform

    platform = load_platform(args.platform)
    name = check_host_name(args.name or socket.gethostname().split(".")[0])
    listen = args.listen or DEFAULT_LISTEN
    machine = factory_default(platform, name)
    ctl = machine.control
    # The host "powers on" now: the control domain's uptime counts from its creation.
    machine = put_domain(machine, replace(ctl, started_at=time.time()))
    store.create_host(machine, listen=listen)
    _store_migration_defaults(store, args)
    log.info("created host %s on platform %s (%s) at factory default", name, platform.name, platform.model)
    return machine, listen


def _setup_logging(home: Home) -> None:
    handler = logging.FileHandler(home.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def serve(
    home: Home, store: Store, machine: Machine, listen: str, *, accept_incoming: bool = True
) -> None:
    from ldoms.daemon.host import Host
    from ldoms.daemon.migrate import MigrationManager
    from ldoms.daemon.migrate_guest import GuestOps
    from ldoms.daemon.migrate_recovery import recover_before_guests
    from ldoms.daemon.recovery import recover
    from ldoms.hv.supervisor import GuestSupervisor
    from ldoms.migration.journal import JournalStore
    from ldoms.migration.transport import MigrationPolicy, TestHooks
    from ldoms.peer.listener import PeerListener
    from ldoms.peer.tls import ensure_host_tls

    guests = GuestSupervisor(home.guests)
    recovered = recover_before_guests(machine, JournalStore.in_home(home.path), guests)
    recovered = recover(recovered, guests, now=time.time())
    if recovered != machine:
        store.commit(recovered)
    guests.warm_up()  # the zygote starts beside the API: the first guest start does not wait for it
    host = Host(machine=recovered, store=store, guests=guests, listen=listen)
    policy = MigrationPolicy.with_hooks(TestHooks.from_env())
    manager = MigrationManager(
        host, home.path, GuestOps(guests), policy=policy, accept_incoming=accept_incoming
    )
    host.migrations = manager
    manager.recover()
    ensure_host_tls(home.path, recovered.host_name, listen)
    # A port in use is reported here.  connect_s bounds the whole unauthenticated phase of a peer (TLS,
    # Hellos, Auth), not each read: trickling cannot hold one of its slots (SECURITY.md, "The peer port").
    peers = PeerListener(home.path, listen, manager.handle_peer, login_timeout=policy.connect_s)
    try:
        _serve_api(home, host, peers.start())
    finally:
        peers.close()
        manager.close()


def _serve_api(home: Home, host: Host, peers: PeerListener) -> None:
    import uvicorn

    from ldoms.daemon.api import create_app
    from ldoms.daemon.httpproto import HeadTimeoutProtocol
    from ldoms.daemon.sockpath import bind_unix

    guests, recovered, listen = host.guests, host.machine, host.listen
    app = create_app(host)
    sock = bind_unix(home.sock, mode=0o600)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=5,
        http=HeadTimeoutProtocol,  # closes clients that never finish a request head (slow loris)
        limit_concurrency=1024,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal after its shutdown with the handler found at start: ours is a no-op,
    # so the process gets to clean up (socket, store, lock) and exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    m = recovered
    log.info(
        "serving host %s (platform %s) on %s; peers: %s (listening on %s:%d)",
        m.host_name, m.platform.name, home.sock, listen, *peers.address,
    )  # fmt: skip
    print(
        f"ldmd: serving host {m.host_name} (platform {m.platform.name}) in {home.path}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        home.sock.unlink(missing_ok=True)
        guests.forget_children()
        guests.stop_zygote()
        log.info("stopped (guests keep running)")


def main(argv: list[str] | None = None) -> int:
    args = full_parser().parse_args(argv)
    os.umask(0o077)  # everything in the home is private: state, log, guest memory, TLS key, users
    if getattr(args, "command", None) is not None:
        from ldoms.daemon import admin

        return admin.run_admin(args)  # works on the home's files; no home lock (a running ldmd may serve it)
    home = Home(resolve_home(args.home))
    logging_ready = False
    try:
        home.prepare()
        home.lock()
        _setup_logging(home)
        logging_ready = True
        store, machine, listen = open_host(home, args)
        try:
            accept = not getattr(args, "no_incoming_migrations", False)
            serve(home, store, machine, listen, accept_incoming=accept)
        finally:
            store.close()
        return 0
    except LdmError as e:
        if logging_ready:  # never into the log of the ldmd that holds the home
            log.error("%s", e.message)
        print(f"ldmd: {e.message}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    finally:
        home.unlock()


if __name__ == "__main__":
    sys.exit(main())
