"""Two-step verification for one account: state, code checks, enrolment, recovery codes.

Every method that changes something commits before it returns, so no transaction is
ever held open while a user is being asked a question. Time comes from `clock`, so tests
move time instead of sleeping.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn

from ..errors import Refusal
from ..kinds import Factor, KeyKind
from ..sshkeys import PublicKey
from ..store import keys
from ..store import twosv as store
from ..store.database import Database
from . import recovery, throttle, totp
from .sealing import Sealer

# How long an enrolment's secret, shown but not confirmed, is shown again (seconds).
PENDING_SECONDS = 10 * 60


@dataclass(frozen=True)
class State:
    totp: bool
    security_keys: int
    codes_left: int
    codes_total: int

    @property
    def enabled(self) -> bool:
        return self.totp or self.security_keys > 0

    @property
    def methods(self) -> list[Factor]:
        return ([Factor.TOTP] if self.totp else []) + (
            [Factor.SECURITY_KEY] if self.security_keys else []
        )

    def describe(self) -> str:
        if not self.enabled:
            return "Two-step verification is disabled."
        return (
            f"Two-step verification is enabled ({', '.join(self.methods)}); "
            f"{self.codes_left} of {self.codes_total} recovery codes left."
        )


@dataclass(frozen=True)
class Accepted:
    kind: str  # "totp" or "recovery-code"
    codes_left: int | None = None


class TwoSV:
    def __init__(
        self,
        db: Database,
        sealer: Sealer | None,
        account_id: int,
        account: str,
        backoff_base: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.sealer = sealer
        self.account_id = account_id
        self.account = account
        self.backoff_base = backoff_base
        self.clock = clock

    # --- state ------------------------------------------------------------------------

    async def state(self) -> State:
        row = await store.get(self.db, self.account_id)
        sk = [
            k for k in await keys.list_for(self.db, self.account) if k.kind == KeyKind.SECURITY_KEY
        ]
        codes = await store.codes(self.db, self.account_id)
        return State(
            totp=bool(row and row.totp_secret),
            security_keys=len(sk),
            codes_left=sum(1 for c in codes if c.used_at is None),
            codes_total=len(codes),
        )

    def _sealing(self) -> Sealer:
        """The master key's sealer: everything but `state` needs it (the CLI and the
        access decision make a TwoSV without one, only to read the state)."""
        if self.sealer is None:
            raise RuntimeError("this TwoSV was made without the master key's sealer")
        return self.sealer

    def _secret_context(self) -> str:
        return f"totp:{self.account_id}"

    def _code_context(self) -> str:
        return f"recovery:{self.account_id}"

    # --- checking a code --------------------------------------------------------------

    async def check(self, typed: str) -> Accepted:
        """Accept a TOTP or recovery code, or raise a Refusal saying why.

        Malformed input is refused without counting as a guess; a wrong code counts
        towards the back-off; a refusal during the back-off does not look at the code.
        The whole check is one write transaction under the account's lock (db.write:
        BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so that parallel
        connections guessing for one account are taken one at a time and none slips past
        the back-off. The caller's Database must have no transaction open.
        """
        refused: CodeRefused | None = None
        async with self.db.write(self._lock()):
            try:
                accepted = await self._check(typed)
            except CodeRefused as exc:
                refused = exc  # the failure is counted: committed, then raised
        if refused is not None:
            raise refused
        return accepted

    def _lock(self) -> str:
        """The lock a read-then-write of this account's 2SV state holds (db.write)."""
        return f"twosv:{self.account_id}"

    async def _check(self, typed: str) -> Accepted:
        now = self.clock()
        row = await store.get(self.db, self.account_id)
        if row is not None and row.locked_until > now:
            wait = math.ceil(row.locked_until - now)
            raise Throttled(f"Too many failed codes. Try again in {wait} seconds.")
        code = totp.normalise(typed)
        if code is not None:
            if row is None or row.totp_secret is None:
                raise Refusal("This account has no authenticator app; use a recovery code.")
            secret = self._sealing().open(row.totp_secret, self._secret_context()).decode()
            step = totp.matching_step(secret, code, now)
            if step is None:
                await self._fail("Wrong verification code.")
            if not await store.claim_step(self.db, self.account_id, step):
                await self._fail("That verification code was already used; wait for the next one.")
            await store.reset_failures(self.db, self.account_id)
            return Accepted(Factor.TOTP)
        rcode = recovery.normalise(typed)
        if rcode is None:
            raise Refusal(
                "A verification code is six digits, a recovery code looks like xxxxx-xxxxx."
            )
        codes = await store.codes(self.db, self.account_id)
        match = None
        for stored in codes:
            plain = self._sealing().open(stored.sealed, self._code_context()).decode()
            if hmac.compare_digest(plain, rcode) and match is None:
                match = stored
        if match is None or not await store.use_code(self.db, match.id, int(now)):
            await self._fail("Wrong or already used recovery code.")
        await store.reset_failures(self.db, self.account_id)
        left = sum(1 for c in codes if c.used_at is None) - 1
        return Accepted(Factor.RECOVERY_CODE, codes_left=left)

    async def _fail(self, message: str) -> NoReturn:
        """Count a wrong code (committed by `check`) and refuse."""
        failures = await store.record_failure(self.db, self.account_id)
        backoff = throttle.backoff_after(failures, self.backoff_base)
        if backoff:
            await store.lock_until(self.db, self.account_id, self.clock() + backoff)
        raise CodeRefused(message, failures)

    # --- changes ----------------------------------------------------------------------

    async def enrolment_secret(self, fingerprint: str) -> str:
        """The secret to show for an enrolment: the one shown in the last PENDING_SECONDS
        to the same SSH key and not confirmed yet, if any (the user may have added it to
        the app already), else a new one, kept sealed for that long. Confirming it
        (`enrol`) clears it. The key is part of the sealing context, so another key of the
        account (a stolen old one) never sees a secret its owner is enrolling."""
        context = self._pending_context(fingerprint)
        sealed = await store.pending(self.db, self.account_id, self.clock())
        if sealed is not None:
            with contextlib.suppress(RuntimeError):  # sealed for another key: a new one
                return self._sealing().open(sealed, context).decode()
        secret = totp.new_secret()
        await store.set_pending(
            self.db,
            self.account_id,
            self._sealing().seal(secret.encode(), context),
            self.clock() + PENDING_SECONDS,
        )
        await self.db.commit()
        return secret

    def _pending_context(self, fingerprint: str) -> str:
        return f"totp-pending:{self.account_id}:{fingerprint}"

    def check_new_secret(self, secret: str, typed: str) -> int | None:
        """The step at which a code for a secret being enrolled matched (not stored yet)."""
        code = totp.normalise(typed)
        if code is None:
            raise Refusal("A verification code is six digits.")
        return totp.matching_step(secret, code, self.clock())

    async def enrol(self, secret: str, step: int, new_codes: int, expected: State) -> list[str]:
        """Make `secret` the TOTP secret (replacing any old one) and, if asked, issue a
        new set of recovery codes, in one transaction: never half enrolled. `expected` is
        the state the user's decision was based on: if 2SV changed meanwhile (another
        session turned it on), nothing is written."""
        async with self._write(expected):
            sealed = self._sealing().seal(secret.encode(), self._secret_context())
            await store.set_totp(self.db, self.account_id, sealed, step)
            await store.reset_failures(self.db, self.account_id)
            return await self._replace_codes(new_codes) if new_codes else []

    @contextlib.asynccontextmanager
    async def _write(self, expected: State) -> AsyncIterator[None]:
        async with self.db.write(self._lock()):
            now = await self.state()
            if (now.totp, now.security_keys > 0) != (expected.totp, expected.security_keys > 0):
                raise Refusal(
                    "Two-step verification changed in another session meanwhile; "
                    "nothing changed. Check it with: 2sv status"
                )
            yield

    async def _replace_codes(self, count: int) -> list[str]:
        plain = [recovery.new_code() for _ in range(count)]
        sealed = [self._sealing().seal(code.encode(), self._code_context()) for code in plain]
        await store.replace_codes(self.db, self.account_id, sealed)
        return [recovery.display(code) for code in plain]

    async def new_recovery_codes(self, count: int) -> list[str]:
        codes = await self._replace_codes(count)
        await self.db.commit()
        return codes

    async def recovery_codes(self) -> list[tuple[str, bool]]:
        """Every code with whether it was used, for its owner's eyes only."""
        result = []
        for stored in await store.codes(self.db, self.account_id):
            plain = self._sealing().open(stored.sealed, self._code_context()).decode()
            result.append((recovery.display(plain), stored.used_at is not None))
        return result

    async def disable(self) -> None:
        await store.delete_all(self.db, self.account_id)
        await keys.demote_security_keys(self.db, self.account_id)
        await self.db.commit()

    async def add_security_key(
        self, key: PublicKey, title: str, new_codes: int, expected: State
    ) -> list[str]:
        """Register `key` as a security key (an existing plain key of this account is
        promoted); issue recovery codes if asked; one transaction, as for `enrol`."""
        async with self._write(expected):
            existing = await keys.find(self.db, key.fingerprint)
            if existing is None:
                await keys.add(
                    self.db, self.account_id, key, title, source="ssh", kind=KeyKind.SECURITY_KEY
                )
            elif existing.account_id == self.account_id and existing.kind == KeyKind.LOGIN:
                await keys.set_kind(self.db, key.fingerprint, KeyKind.SECURITY_KEY)
            else:
                raise Refusal(f"Key {key.fingerprint} is already in use")
            return await self._replace_codes(new_codes) if new_codes else []

    async def remove_security_key(self, fingerprint: str) -> bool:
        """Remove one; True when it was the last 2SV method (then 2SV is off)."""
        async with self.db.write(self._lock()):
            await keys.remove(self.db, fingerprint)
            after = await self.state()
            if not after.enabled:
                await store.delete_all(self.db, self.account_id)
        return not after.enabled

    async def open_session(self, fingerprint: str, method: str) -> None:
        await store.open_session(self.db, fingerprint, self.account_id, self.clock(), method)
        await self.db.commit()


class CodeRefused(Refusal):
    """A wrong code: counted towards the back-off."""

    def __init__(self, message: str, failures: int) -> None:
        super().__init__(message)
        self.failures = failures


class Throttled(Refusal):
    """A code not even looked at: the account is in its back-off (SPEC §5)."""
