"""ldm's client for ldmd's local API on the home's Unix socket.

Errors come back as `LdmError`s: an answer's error body {code, message, exit_code} is rebuilt as the error
class with that code (so callers can tell a refusal from a failure), and a daemon that cannot be reached is
one `DaemonUnavailable` naming the home.  Plain `http.client` over the Unix socket: ldm is run once per
command, and a heavier HTTP library would cost more to import than the whole request takes.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ldoms import errors
from ldoms.daemon.sockpath import connect_unix
from ldoms.model.codec import decode, to_json
from ldoms.model.view import HostView
from ldoms.ops.base import Request

# ldmd answers reads at once; an operation may take long (a migration), so reads of /v1/ops never time out.
CONNECT_TIMEOUT_S = 10.0


def _error_classes() -> dict[str, type[errors.LdmError]]:
    out: dict[str, type[errors.LdmError]] = {}
    todo: list[type[errors.LdmError]] = [errors.LdmError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return out


def error_from_body(status: int, body: Any) -> errors.LdmError:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        code = str(body.get("code", "error"))
        cls = _error_classes().get(code, errors.LdmError)
        err = cls(body["message"], code=code)
        exit_code = body.get("exit_code")
        if isinstance(exit_code, int) and 0 < exit_code < 256:
            err.exit_code = exit_code
        return err
    return errors.LdmError(f"ldmd answered HTTP {status} without an error message")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("ldmd", timeout=None)  # no read timeout: an operation may run for long
        self._path = path

    def connect(self) -> None:
        check_owner(self._path, os.stat(self._path).st_uid, "socket")
        self.sock = connect_unix(self._path, timeout=CONNECT_TIMEOUT_S)
        # The process behind the socket gets the target password: it must be ours (or root's).
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        check_owner(self._path, uid, "ldmd serving it")
        self.sock.settimeout(None)


class ForeignSocket(errors.DaemonUnavailable):
    code = "foreign-socket"


def check_owner(path: Path, uid: int, what: str) -> None:
    """Refuse a control socket that another user owns or serves (a mistyped or shared LDM_HOME)."""
    if uid not in (os.getuid(), 0):
        raise ForeignSocket(
            f"Refusing to talk to {path}: the {what} belongs to uid {uid}, not to you (uid {os.getuid()}) "
            "or root"
        )


class Client:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock = home / "ldmd.sock"

    def _unavailable(self, reason: str) -> errors.DaemonUnavailable:
        return errors.DaemonUnavailable(
            f"Failed to connect to logical domain manager: no ldmd is serving home {self.home} "
            f"({self.sock}: {reason})"
        )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.sock.exists():
            raise self._unavailable("No such file or directory")
        conn = _UnixHTTPConnection(self.sock)
        try:
            try:
                conn.connect()
            except OSError as e:
                raise self._unavailable(e.strerror or str(e)) from e
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as e:
            raise errors.DaemonUnavailable(
                f"Lost the connection to the logical domain manager of home {self.home}: "
                f"{getattr(e, 'strerror', None) or e or type(e).__name__}"
            ) from e
        finally:
            conn.close()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status >= 400:
            raise error_from_body(status, data)
        return data

    def view(self) -> HostView:
        return decode(HostView, self._call("GET", "/v1/view"))

    def host(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/host"))

    def migrate(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /v1/migrate: each NDJSON item as it arrives (progress, then the result).  The connection stays
        open until the result: closing it early (this process dying) cancels the migration in ldmd."""
        if not self.sock.exists():
            raise self._unavailable("No such file or directory")
        conn = _UnixHTTPConnection(self.sock)
        try:
            try:
                conn.connect()
            except OSError as e:
                raise self._unavailable(e.strerror or str(e)) from e
            try:
                conn.request(
                    "POST", "/v1/migrate", body=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                response = conn.getresponse()
                if response.status >= 400:
                    raw = response.read()
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        data = None
                    raise error_from_body(response.status, data)
                while line := response.readline():
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise errors.LdmError(
                            f"ldmd sent an unreadable progress line: {line[:80]!r}"
                        ) from None
                    if isinstance(item, dict):
                        yield item
            except (OSError, http.client.HTTPException) as e:
                raise errors.DaemonUnavailable(
                    f"Lost the connection to the logical domain manager of home {self.home} during the "
                    f"migration: {getattr(e, 'strerror', None) or e or type(e).__name__}"
                ) from e
        finally:
            conn.close()

    def op(self, request: Request) -> list[str]:
        body = {
            "verb": request.verb,
            "flags": to_json(request.flags),
            "props": [list(p) for p in request.props],
            "operands": list(request.operands),
        }
        data = self._call("POST", "/v1/ops", body)
        return [str(m) for m in data["messages"]]
