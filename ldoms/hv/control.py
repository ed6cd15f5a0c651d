"""The client of a guest's control socket (`guests/NAME.ctl`): what ldmd and the migration engine call.

One request per connection: a JSON object line `{"cmd": CMD, ...args}`, answered by one JSON line that
holds `"ok": true` and the result, or `"ok": false` and `"error"`.  The guest serves requests between its
workload's steps, so `suspend` returns at a step boundary.  See ldoms/hv/guest.py for the guest's side.

Commands: `ping`; `status` (steps, workload, throttle, suspended, measured dirty rate, OS profile, softstate,
incoming downtime); `suspend` (answer: `{"state": ...}` with `workload`, `steps`, `suspended_at` and the
workload's progress); `resume`; `throttle` (`percent` 0..99, for auto-converge); `restore` (`state`: an
incoming standby guest takes the source's state and runs; answer holds `downtime`); `verify` (ledger only:
suspend, compare with the expected image, resume; answer: `consistent`, `problems`).
"""

from __future__ import annotations

import json
from typing import Any

from ldoms.daemon.sockpath import LineTooLong, connect_unix, read_line
from ldoms.hv.files import GuestFiles
from ldoms.hv.supervisor import GuestError

MAX_REPLY = 4 * 1024 * 1024


class GuestControlError(GuestError):
    """A control request failed: the guest refused it, or could not be reached or did not answer."""

    code = "guest-control"

    def __init__(self, domain: str, cmd: str, reason: str) -> None:
        super().__init__(f"Guest of LDom {domain}: {cmd} request failed: {reason}")
        self.domain = domain
        self.cmd = cmd
        self.reason = reason


class GuestControl:
    def __init__(self, files: GuestFiles, *, timeout: float = 2.0) -> None:
        self.files = files
        self.domain = files.domain
        self.timeout = timeout

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one request and return the guest's answer (`ok` is true); raise GuestControlError else."""
        return self._call(cmd, args, self.timeout)

    def _call(self, cmd: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        line = json.dumps({**args, "cmd": cmd}).encode() + b"\n"
        try:
            with connect_unix(self.files.ctl, timeout=timeout) as s:
                s.sendall(line)
                data = read_line(s, MAX_REPLY)
        except LineTooLong as e:
            raise GuestControlError(self.domain, cmd, str(e)) from None
        except FileNotFoundError:
            raise GuestControlError(
                self.domain, cmd, f"the guest is not running (no control socket {self.files.ctl})"
            ) from None
        except ConnectionRefusedError:
            raise GuestControlError(
                self.domain, cmd, f"the guest is not running (nobody listens on {self.files.ctl})"
            ) from None
        except TimeoutError:
            raise GuestControlError(self.domain, cmd, f"no answer within {timeout:g} s") from None
        except OSError as e:
            raise GuestControlError(self.domain, cmd, f"control socket error: {e}") from None
        if not data:
            raise GuestControlError(self.domain, cmd, "the guest closed the connection without answering")
        try:
            reply = json.loads(data)
        except ValueError:
            raise GuestControlError(self.domain, cmd, f"unreadable answer {data[:80]!r}") from None
        if not isinstance(reply, dict):
            raise GuestControlError(self.domain, cmd, f"unreadable answer {data[:80]!r}")
        if reply.get("ok") is not True:
            raise GuestControlError(self.domain, cmd, str(reply.get("error", "refused without a reason")))
        return reply

    # ------------------------------------------------------------------ commands
    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def suspend(self, timeout: float | None = None) -> dict[str, Any]:
        """Stop the guest at its next step boundary; the answer's `state` is what `restore` (or an incoming
        start) takes on the target."""
        return self._call("suspend", {}, self.timeout if timeout is None else timeout)

    def resume(self) -> dict[str, Any]:
        return self.request("resume")

    def throttle(self, percent: int) -> dict[str, Any]:
        """Make the guest sleep `percent` % of its time (0..99; 0 lifts the throttle)."""
        return self.request("throttle", percent=percent)

    def restore(self, state: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Hand a standby incoming guest its state: it runs at once; the answer holds `downtime`."""
        return self._call("restore", {"state": state}, self.timeout if timeout is None else timeout)

    def verify(self, timeout: float = 120.0) -> dict[str, Any]:
        """Ledger only: check the memory against the expected image (the guest holds still meanwhile)."""
        return self._call("verify", {}, timeout)
