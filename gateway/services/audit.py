"""Reading the audit log, by everyone or about one account."""

from __future__ import annotations

from .. import names
from ..errors import Refusal
from ..store import accounts, audit
from ..store.database import Database


async def read(db: Database, account: str | None, limit: int) -> list[audit.Entry]:
    """The last `limit` rows, oldest first; with `account`, what it did and what was done
    to it (an account that never existed is refused, one that is gone is not)."""
    actor = names.account_name(account) if account else None
    entries = await audit.read(db, actor, limit)
    if actor and not entries and await accounts.find(db, actor) is None:
        raise Refusal(f"No such account: {actor} ('gateway account list' shows them)")
    return entries
