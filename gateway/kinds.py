"""The small closed vocabularies the gateway stores and compares: key kinds, member roles
and a workspace's 2SV requirement.

Each is a `StrEnum`, so a member *is* its string: it goes into SQLite and JSON, and
compares equal to what the database hands back, exactly as the bare strings did.
"""

from __future__ import annotations

from enum import StrEnum


class KeyKind(StrEnum):
    """What an account's SSH key is (column `ssh_keys.kind`)."""

    LOGIN = "auth"  # a plain key that logs in
    SECURITY_KEY = "security-key"  # an sk-* key: logs in, and is a 2SV method


class Role(StrEnum):
    """A member's role in a workspace (column `members.role`)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


WRITE_ROLES = (Role.WRITE, Role.ADMIN)


class Requirement(StrEnum):
    """What a workspace requires of its members' two-step verification
    (column `workspaces.require_2sv`)."""

    OFF = "off"
    ON = "on"  # 2SV enabled on the account
    SESSION = "session"  # and a verified two-step session for the key in use


class AccessMode(StrEnum):
    """What an access key may do to its one repository (stored as `access_keys.write`)."""

    READ = "read"
    WRITE = "write"

    @classmethod
    def of(cls, write: bool) -> AccessMode:
        return cls.WRITE if write else cls.READ


class Factor(StrEnum):
    """How a second factor was given (`Accepted.kind`, `twosv_sessions.method`)."""

    TOTP = "totp"
    RECOVERY_CODE = "recovery-code"
    SECURITY_KEY = "security-key"
