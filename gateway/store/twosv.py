"""Two-step verification state. Values in `totp_secret` and `code` are sealed.

The updates that must not race (claiming a TOTP step, using a recovery code, counting a
failure) are single conditional statements, so that of two connections trying the same
code exactly one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

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


async def get(db: aiosqlite.Connection, account_id: int) -> TwoSVRow | None:
    async with db.execute("SELECT * FROM twosv WHERE account_id = ?", (account_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    return TwoSVRow(
        row["account_id"],
        row["totp_secret"],
        row["last_step"],
        row["failures"],
        row["locked_until"],
    )


async def _ensure(db: aiosqlite.Connection, account_id: int) -> None:
    await db.execute("INSERT OR IGNORE INTO twosv (account_id) VALUES (?)", (account_id,))


async def set_totp(
    db: aiosqlite.Connection, account_id: int, sealed: bytes, last_step: int
) -> None:
    await _ensure(db, account_id)
    await db.execute(
        "UPDATE twosv SET totp_secret = ?, last_step = ?, pending_secret = NULL,"
        " pending_until = 0 WHERE account_id = ?",
        (sealed, last_step, account_id),
    )


async def pending(db: aiosqlite.Connection, account_id: int, now: float) -> bytes | None:
    """The sealed secret of an enrolment shown before and not yet confirmed, if recent."""
    async with db.execute(
        "SELECT pending_secret FROM twosv WHERE account_id = ? AND pending_until > ?",
        (account_id, now),
    ) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None


async def set_pending(
    db: aiosqlite.Connection, account_id: int, sealed: bytes, until: float
) -> None:
    await _ensure(db, account_id)
    await db.execute(
        "UPDATE twosv SET pending_secret = ?, pending_until = ? WHERE account_id = ?",
        (sealed, until, account_id),
    )


async def claim_step(db: aiosqlite.Connection, account_id: int, step: int) -> bool:
    """Record `step` as used; False if it (or a later one) was accepted before."""
    cursor = await db.execute(
        "UPDATE twosv SET last_step = ? WHERE account_id = ? AND last_step < ?",
        (step, account_id, step),
    )
    return cursor.rowcount == 1


async def record_failure(db: aiosqlite.Connection, account_id: int) -> int:
    await _ensure(db, account_id)
    async with db.execute(
        "UPDATE twosv SET failures = failures + 1 WHERE account_id = ? RETURNING failures",
        (account_id,),
    ) as cursor:
        (failures,) = one(await cursor.fetchone())
    return int(failures)


async def lock_until(db: aiosqlite.Connection, account_id: int, until: float) -> None:
    await db.execute(
        "UPDATE twosv SET locked_until = MAX(locked_until, ?) WHERE account_id = ?",
        (until, account_id),
    )


async def reset_failures(db: aiosqlite.Connection, account_id: int) -> None:
    await db.execute(
        "UPDATE twosv SET failures = 0, locked_until = 0 WHERE account_id = ?", (account_id,)
    )


# --- recovery codes -------------------------------------------------------------------


async def replace_codes(db: aiosqlite.Connection, account_id: int, sealed: list[bytes]) -> None:
    await db.execute("DELETE FROM recovery_codes WHERE account_id = ?", (account_id,))
    await db.executemany(
        "INSERT INTO recovery_codes (account_id, position, code) VALUES (?, ?, ?)",
        [(account_id, i, code) for i, code in enumerate(sealed)],
    )


async def codes(db: aiosqlite.Connection, account_id: int) -> list[RecoveryCode]:
    async with db.execute(
        "SELECT id, position, code, used_at FROM recovery_codes WHERE account_id = ?"
        " ORDER BY position",
        (account_id,),
    ) as cursor:
        return [RecoveryCode(*tuple(row)) for row in await cursor.fetchall()]


async def use_code(db: aiosqlite.Connection, code_id: int, now: int) -> bool:
    cursor = await db.execute(
        "UPDATE recovery_codes SET used_at = ? WHERE id = ? AND used_at IS NULL", (now, code_id)
    )
    return cursor.rowcount == 1


async def delete_all(db: aiosqlite.Connection, account_id: int) -> None:
    """Everything 2SV of an account: secret, codes, sessions (security keys are keys)."""
    await db.execute("DELETE FROM recovery_codes WHERE account_id = ?", (account_id,))
    await db.execute("DELETE FROM twosv_sessions WHERE account_id = ?", (account_id,))
    await db.execute("UPDATE twosv SET totp_secret = NULL WHERE account_id = ?", (account_id,))


# --- two-step sessions ----------------------------------------------------------------


async def open_session(
    db: aiosqlite.Connection, fingerprint: str, account_id: int, now: float, method: str
) -> None:
    await db.execute(
        "INSERT INTO twosv_sessions (key_fingerprint, account_id, verified_at, method)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key_fingerprint) DO UPDATE SET verified_at = excluded.verified_at,"
        " account_id = excluded.account_id, method = excluded.method",
        (fingerprint, account_id, now, method),
    )


async def session(
    db: aiosqlite.Connection, fingerprint: str, account_id: int
) -> tuple[float, str] | None:
    """When the key's two-step session was opened and how, or None without one."""
    async with db.execute(
        "SELECT verified_at, method FROM twosv_sessions WHERE key_fingerprint = ?"
        " AND account_id = ?",
        (fingerprint, account_id),
    ) as cursor:
        row = await cursor.fetchone()
    return (row[0], row[1]) if row else None


async def session_verified_at(
    db: aiosqlite.Connection, fingerprint: str, account_id: int
) -> float | None:
    found = await session(db, fingerprint, account_id)
    return found[0] if found else None


@dataclass(frozen=True)
class OpenSession:
    key_fingerprint: str
    key_title: str | None  # None: not a stored key (a certificate's key)
    verified_at: float
    method: str


async def sessions_of(db: aiosqlite.Connection, account_id: int) -> list[OpenSession]:
    """Every two-step session of an account's keys, newest first."""
    async with db.execute(
        "SELECT s.key_fingerprint, k.title, s.verified_at, s.method FROM twosv_sessions s"
        " LEFT JOIN ssh_keys k ON k.fingerprint = s.key_fingerprint"
        " WHERE s.account_id = ? ORDER BY s.verified_at DESC",
        (account_id,),
    ) as cursor:
        return [OpenSession(*tuple(row)) for row in await cursor.fetchall()]


async def close_sessions(db: aiosqlite.Connection, account_id: int) -> int:
    """Close every two-step session of an account's keys; how many there were."""
    cursor = await db.execute("DELETE FROM twosv_sessions WHERE account_id = ?", (account_id,))
    return cursor.rowcount
