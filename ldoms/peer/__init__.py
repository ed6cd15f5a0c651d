"""The secure link between two ldmds, for migrations.

    tls.py          the host's TLS identity in HOME/tls (EC P-256 key, certificate, fingerprint)
    trust.py        peers (HOME/peers.toml: name -> address, port, pin) and trusted CAs (HOME/tls/ca.pem)
    target.py       resolving `migrate-domain ... host2`: configured peers first, then DNS on port 6482
    credentials.py  users allowed to migrate in (HOME/users.toml, scrypt), the `-p FILE` rules
    throttle.py     login rate limiting: back-off per source address and per user name
    link.py         PeerLink (length-prefixed frames over verified TLS) and connect_peer (the source side)
    listener.py     PeerListener (the target side: threaded TLS server for the daemon)
    files.py        atomic private files, the configuration lock, a small TOML writer
    errors.py       one exception class per failure

Source side:  `link = connect_peer(home, "host2", certificate_mode=False, timeout=30)`, then frames.
Target side:  `PeerListener(home, "0.0.0.0:6482", handler).start()`; `handler(link)` authenticates with
`authenticate(home, user, password, host_name=...)` or `authenticate_certificate(link.identity, ...)`, then
calls `link.logged_in()` (until then the listener's login clock runs: `login_timeout`, 30 s in all).

Import the submodules themselves (`from ldoms.peer.link import connect_peer`): this package imports nothing,
so `ldm`, which needs only `ldoms.peer.credentials.read_password_file`, does not load TLS and x509 code.
"""
