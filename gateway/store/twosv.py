"""Two-step verification state. Values in `totp_secret` and `code` are sealed.

The updates that must not race (claiming a TOTP step, using a recovery code, counting a
failure) are single conditional statements, so that of two connections trying the same
code exactly one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database
from .db import one


@dataclass(frozen=True)
class TwoSVRow:
    account_id: int
    totp_secret: bytes | None
    last_step: int
    failures: int
    locked_until: float


@dataclass(frozen=True)
class RecoveryCode:
    id: int
    position: int
    sealed: bytes
    used_at: int | None


async def get(db: Database, account_id: int) -> TwoSVRow | None:
    row = await db.fetch_one("SELECT * FROM twosv WHERE account_id = ?", (account_id,))
    if row is None:
        return None
    return TwoSVRow(
        row["account_id"],
        row["totp_secret"],
        row["last_step"],
        row["failures"],
        row["locked_until"],
    )


async def _ensure(db: Database, account_id: int) -> None:
    await db.execute(
        "INSERT INTO twosv (account_id) VALUES (?) ON CONFLICT DO NOTHING", (account_id,)
    )


async def set_totp(db: Database, account_id: int, sealed: bytes, last_step: int) -> None:
    await _ensure(db, account_id)
    await db.execute(
        "UPDATE twosv SET totp_secret = ?, last_step = ?, pending_secret = NULL,"
        " pending_until = 0 WHERE account_id = ?",
        (sealed, last_step, account_id),
    )


async def pending(db: Database, account_id: int, now: float) -> bytes | None:
    """The sealed secret of an enrolment shown before and not yet confirmed, if recent."""
    row = await db.fetch_one(
        "SELECT pending_secret FROM twosv WHERE account_id = ? AND pending_until > ?",
        (account_id, now),
    )
    return row[0] if row else None


async def set_pending(db: Database, account_id: int, sealed: bytes, until: float) -> None:
    await _ensure(db, account_id)
    await db.execute(
        "UPDATE twosv SET pending_secret = ?, pending_until = ? WHERE account_id = ?",
        (sealed, until, account_id),
    )


async def claim_step(db: Database, account_id: int, step: int) -> bool:
    """Record `step` as used; False if it (or a later one) was accepted before."""
    result = await db.execute(
        "UPDATE twosv SET last_step = ? WHERE account_id = ? AND last_step < ?",
        (step, account_id, step),
    )
    return result.rowcount == 1


async def record_failure(db: Database, account_id: int) -> int:
    await _ensure(db, account_id)
    (failures,) = one(
        await db.fetch_one(
            "UPDATE twosv SET failures = failures + 1 WHERE account_id = ? RETURNING failures",
            (account_id,),
        )
    )
    return int(failures)


async def lock_until(db: Database, account_id: int, until: float) -> None:
    # Only ever later (SQL both backends speak: no two-argument MAX/GREATEST).
    await db.execute(
        "UPDATE twosv SET locked_until = ? WHERE account_id = ? AND locked_until < ?",
        (until, account_id, until),
    )


async def reset_failures(db: Database, account_id: int) -> None:
    await db.execute(
        "UPDATE twosv SET failures = 0, locked_until = 0 WHERE account_id = ?", (account_id,)
    )


# --- recovery codes -------------------------------------------------------------------


async def replace_codes(db: Database, account_id: int, sealed: list[bytes]) -> None:
    await db.execute("DELETE FROM recovery_codes WHERE account_id = ?", (account_id,))
    await db.executemany(
        "INSERT INTO recovery_codes (account_id, position, code) VALUES (?, ?, ?)",
        [(account_id, i, code) for i, code in enumerate(sealed)],
    )


async def codes(db: Database, account_id: int) -> list[RecoveryCode]:
    rows = await db.fetch_all(
        "SELECT id, position, code, used_at FROM recovery_codes WHERE account_id = ?"
        " ORDER BY position",
        (account_id,),
    )
    return [RecoveryCode(*tuple(row)) for row in rows]


async def use_code(db: Database, code_id: int, now: int) -> bool:
    result = await db.execute(
        "UPDATE recovery_codes SET used_at = ? WHERE id = ? AND used_at IS NULL", (now, code_id)
    )
    return result.rowcount == 1


async def delete_all(db: Database, account_id: int) -> None:
    """Everything 2SV of an account: secret, codes, sessions (security keys are keys)."""
    await db.execute("DELETE FROM recovery_codes WHERE account_id = ?", (account_id,))
    await db.execute("DELETE FROM twosv_sessions WHERE account_id = ?", (account_id,))
    await db.execute("UPDATE twosv SET totp_secret = NULL WHERE account_id = ?", (account_id,))


# --- two-step sessions ----------------------------------------------------------------


async def open_session(
    db: Database, fingerprint: str, account_id: int, now: float, method: str
) -> None:
    await db.execute(
        "INSERT INTO twosv_sessions (key_fingerprint, account_id, verified_at, method)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key_fingerprint) DO UPDATE SET verified_at = excluded.verified_at,"
        " account_id = excluded.account_id, method = excluded.method",
        (fingerprint, account_id, now, method),
    )


async def session(db: Database, fingerprint: str, account_id: int) -> tuple[float, str] | None:
    """When the key's two-step session was opened and how, or None without one."""
    row = await db.fetch_one(
        "SELECT verified_at, method FROM twosv_sessions WHERE key_fingerprint = ?"
        " AND account_id = ?",
        (fingerprint, account_id),
    )
    return (row[0], row[1]) if row else None


async def session_verified_at(db: Database, fingerprint: str, account_id: int) -> float | None:
    found = await session(db, fingerprint, account_id)
    return found[0] if found else None


@dataclass(frozen=True)
class OpenSession:
    key_fingerprint: str
    key_title: str | None  # None: not a stored key (a certificate's key)
    verified_at: float
    method: str


async def sessions_of(db: Database, account_id: int) -> list[OpenSession]:
    """Every two-step session of an account's keys, newest first."""
    rows = await db.fetch_all(
        "SELECT s.key_fingerprint, k.title, s.verified_at, s.method FROM twosv_sessions s"
        " LEFT JOIN ssh_keys k ON k.fingerprint = s.key_fingerprint"
        " WHERE s.account_id = ? ORDER BY s.verified_at DESC",
        (account_id,),
    )
    return [OpenSession(*tuple(row)) for row in rows]


async def close_sessions(db: Database, account_id: int) -> int:
    """Close every two-step session of an account's keys; how many there were."""
    result = await db.execute("DELETE FROM twosv_sessions WHERE account_id = ?", (account_id,))
    return result.rowcount
