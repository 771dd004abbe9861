"""Every pattern that input from outside is matched against (SPEC §2, §4).

Whitelists only: a value either matches and is passed on as a typed value, or it is
refused with a message that says what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Refusal
from .kinds import Role

ACCOUNT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,38}")
WORKSPACE_RE = ACCOUNT_RE
REPO_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
ROLES = tuple(str(role) for role in Role)  # as argparse offers them


def printable(text: str, limit: int | None = 80) -> str:
    """Make untrusted text safe to echo back on one line: every character that is not
    printable (controls, escapes, newlines, bidi overrides) becomes '?'."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if limit is None or len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def shown(text: str | None) -> str:
    """Stored text on its way to a terminal or an audit line, whole but escaped: rows
    written before titles were checked may still hold anything."""
    return printable(text or "", None)


MAX_TITLE = 100
MAX_EMAIL = 254


def title(text: str, what: str = "title") -> str:
    """A key's title: one printable line (no escapes, newlines or bidi controls), bounded,
    since it is shown to its owner, in listings and in the audit log."""
    if not text.strip() or len(text) > MAX_TITLE or not text.isprintable():
        raise Refusal(
            f"Invalid {what}: {printable(text)!r} (one line of at most {MAX_TITLE} "
            "printable characters)"
        )
    return text


def email(text: str | None) -> str | None:
    if text is None:
        return None
    if (
        len(text) > MAX_EMAIL
        or "@" not in text
        or not text.isprintable()
        or any(ch.isspace() for ch in text)
    ):
        raise Refusal(f"Invalid email address: {printable(text)!r}")
    return text


# The audit log's name for the operator's command line.
RESERVED_ACCOUNTS = ("operator",)


def account_name(name: str) -> str:
    if name in RESERVED_ACCOUNTS:
        raise Refusal(f"Account name {name!r} is reserved")
    if not ACCOUNT_RE.fullmatch(name):
        raise Refusal(
            f"Invalid account name: {printable(name)!r} "
            "(use lowercase letters, digits and '-', at most 39 characters, not starting with '-')"
        )
    return name


def workspace_name(name: str) -> str:
    # Workspaces are matched case-insensitively; their canonical form is lowercase.
    lowered = name.lower()
    if not WORKSPACE_RE.fullmatch(lowered):
        raise Refusal(
            f"Invalid workspace name: {printable(name)!r} "
            "(use letters, digits and '-', at most 39 characters, not starting with '-')"
        )
    return lowered


def _repo_name_problem(name: str) -> str | None:
    """Which rule a repository name breaks, in the words an operator can act on."""
    if not name:
        return "it is empty"
    if name.lower().endswith(".git"):
        return (
            f"it ends in '.git', which URLs add themselves (NAME.git means NAME): "
            f"use {printable(name[:-4])!r}"
        )
    if len(name) > 100:
        return f"it has {len(name)} characters, at most 100 are allowed"
    if name[0] in ".-":
        return f"it starts with {name[0]!r}"
    if ".." in name:
        return "it contains '..'"
    bad = next((ch for ch in name if not REPO_NAME_RE.fullmatch("a" + ch)), None)
    if bad is not None:
        return f"it contains {printable(bad)!r}: use letters, digits, '_', '.' and '-'"
    return None


def repo_name(name: str) -> str:
    problem = _repo_name_problem(name)
    if problem is not None or not REPO_NAME_RE.fullmatch(name):
        raise Refusal(
            f"Invalid repository name: {printable(name)!r}: "
            + (problem or "use letters, digits, '_', '.' and '-'")
        )
    return name


def role(value: str) -> Role:
    if value not in ROLES:
        raise Refusal(f"Invalid role: {printable(value)!r} (use read, write or admin)")
    return Role(value)


@dataclass(frozen=True)
class RepoPath:
    workspace: str
    name: str

    def __str__(self) -> str:
        return f"{self.workspace}/{self.name}"


def repo_path(text: str) -> RepoPath:
    """Parse `WORKSPACE/NAME` as an operator types it (no leading slash, no .git)."""
    workspace, sep, name = text.partition("/")
    if not sep:
        raise Refusal(f"Invalid repository: {printable(text)!r} (expected WORKSPACE/NAME)")
    return RepoPath(workspace_name(workspace), repo_name(name))


def client_repo_path(text: str) -> RepoPath | None:
    """Parse a repository path as a Git client sends it (SPEC §4).

    Accepts `acme/widgets.git`, `acme/widgets` and `/acme/widgets.git`. Returns None for
    anything else, so that the caller can answer with one message whatever the trick was
    (`../`, options such as `--upload-pack=...`, absolute paths, extra segments).
    """
    if text.startswith("/"):
        text = text[1:]
    if text.endswith(".git"):
        text = text[:-4]
    workspace, sep, name = text.partition("/")
    if not sep:
        return None
    if not WORKSPACE_RE.fullmatch(workspace.lower()):
        return None
    if not REPO_NAME_RE.fullmatch(name) or ".." in name or name.lower().endswith(".git"):
        return None
    return RepoPath(workspace.lower(), name)


_BRANCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}")


def branch_name(name: str) -> str:
    """A conservative subset of `git check-ref-format --branch`."""
    if (
        not _BRANCH_RE.fullmatch(name)
        or ".." in name
        or "//" in name
        or "/." in name
        or name.endswith(("/", ".", ".lock"))
    ):
        raise Refusal(f"Invalid branch name: {printable(name)!r}")
    return name
