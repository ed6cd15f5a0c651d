"""The target engine's logins: a password, a client certificate (`-c`), or the recovery token of an earlier
migration, which allows only a RecoveryQuery, answered from this host's journal (SPEC 4.3).  Password logins
are rate-limited by source address and user (`ldoms.peer.throttle`); a successful login stops the peer
listener's login clock (`PeerLink.logged_in`).  A mixin of `TargetEngine`, split out to keep each module
short."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from ldoms.migration.engine_source import RECOVERY_USER_PREFIX
from ldoms.migration.events import Auth, AuthMethod, AuthResult, Decision, RecoveryAnswer, RecoveryQuery, Role
from ldoms.peer.link import PeerLink

if TYPE_CHECKING:
    from ldoms.migration.engine_target import TargetEngine


class TargetAuth:
    # ------------------------------------------------------------------ authentication
    def _authenticate(self: TargetEngine, auth: Auth, link: PeerLink) -> str | None:
        """Send AuthResult; return the migration id when the login is a recovery token."""
        from ldoms.peer import credentials
        from ldoms.peer.errors import AuthenticationFailed, PeerConfigError

        assert self.chan is not None
        host_name = self.deps.host.machine.host_name
        recovery_of: str | None = None
        try:
            if auth.method is AuthMethod.CERTIFICATE:
                credentials.authenticate_certificate(link.identity, host_name=host_name, client=link.where)
            elif auth.user.startswith(RECOVERY_USER_PREFIX):
                recovery_of = auth.user[len(RECOVERY_USER_PREFIX) :]
                self._check_token(recovery_of, auth.password or "", host_name)
            else:
                remote = link.remote_address
                credentials.authenticate(
                    self.deps.home,
                    auth.user,
                    auth.password or "",
                    host_name=host_name,
                    client=link.where,
                    address=remote[0] if remote else None,  # the throttle counts failures by address
                )
        except (AuthenticationFailed, PeerConfigError) as e:
            reason = (
                e.message
                if isinstance(e, AuthenticationFailed)
                else (f"Target host {host_name} cannot check credentials: {e.message}")
            )
            self.chan.send(AuthResult(ok=False, reason=reason))
            return None
        link.logged_in()  # stops the listener's login clock (if it already ran out, the send below fails)
        self.chan.send(AuthResult(ok=True))
        return recovery_of

    def _check_token(self: TargetEngine, migration_id: str, token: str, host_name: str) -> None:
        from ldoms.peer.errors import AuthenticationFailed

        rec = self.deps.journals.load(migration_id, Role.TARGET)
        want = rec.extra.get("token_sha256") if rec is not None else None
        got = hashlib.sha256(token.encode()).hexdigest()
        if not isinstance(want, str) or not hmac.compare_digest(want, got):
            raise AuthenticationFailed(
                f"Authentication failed on target host {host_name}: no migration {migration_id} with that "
                "recovery token is recorded here"
            )

    def _answer_recovery(self: TargetEngine, ev: RecoveryQuery, recovery_of: str | None) -> None:
        assert self.chan is not None
        decision: Decision | None = None
        detail = "no journal of that migration is recorded here"
        if recovery_of is not None and recovery_of != ev.migration_id:
            detail = "the recovery login was for another migration"
        else:
            rec = self.deps.journals.load(ev.migration_id, Role.TARGET)
            if rec is not None:
                decision = rec.journal.recovery()
                detail = f"the target reached phase {rec.journal.phase}"
        self.chan.send(RecoveryAnswer(migration_id=ev.migration_id, decision=decision, detail=detail))
