"""The `database_url` setting: checked when settings load, shown with its password masked.

Kept apart from the PostgreSQL backend so that settings and `config check` need no
driver, and so that every message that names the database goes through `masked()`.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

SCHEMES = ("postgresql", "postgres")
MASK = "***"


def problem(url: str) -> str | None:
    """Why `url` is not a PostgreSQL URL the gateway can use, or None ("": SQLite)."""
    if url == "":
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    if parts.scheme not in SCHEMES:
        return (
            "must be a PostgreSQL URL, postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            "(leave it unset for the SQLite file in the data directory)"
        )
    if parts.fragment or (parts.path not in ("", "/") and "/" in parts.path[1:]):
        return "has a path that is not a database name (postgresql://HOST/DATABASE)"
    return None


def masked(url: str) -> str:
    """`url` with its password (if any) replaced by ***: for messages, logs, `config
    check`. Text that does not parse is shown only up to its scheme."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition(":")[0] + ":" + MASK
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rpartition('@')[2]}"
    if "password=" in query.lower():  # libpq's ?password=... too
        query = "&".join(
            f"{name}={MASK}" if name.lower() == "password" else f"{name}={value}"
            for name, value in parse_qsl(query, keep_blank_values=True)
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment).geturl()


def password(url: str) -> str | None:
    """The password in `url` (to scrub it from a driver's message), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return unquote(parts.password)
    found = [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    return found[0] if found and found[0] else None


def describe(url: str) -> str:
    """USER@HOST:PORT/DATABASE, for messages (defaults as libpq fills them in)."""
    parts = urlsplit(url)
    host = parts.hostname or "the local socket"
    port = f":{parts.port}" if parts.port else ""
    database = parts.path.lstrip("/") or "(the user's name)"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{user}{host}{port}/{unquote(database)}"


def scrubbed(message: str, url: str) -> str:
    """`message` (a driver's, say) with the password of `url` masked wherever it appears."""
    secret = password(url)
    return message.replace(secret, MASK) if secret else message
