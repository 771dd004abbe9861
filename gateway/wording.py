"""How a workspace and its policy are worded, the same by the CLI and over SSH."""

from __future__ import annotations

from .store.workspaces import Member, Workspace


def policy(word: str, window: int) -> str:
    if word == "session":
        return f"session (a verified two-step session, {window} min window)"
    return word


def policy_changed(name: str, word: str, window: int) -> str:
    return f'Workspace "{name}" now requires: {policy(word, window)}.'


def lacking_2sv(names: list[str], applied: bool) -> str:
    """Who does not meet a policy of `on` or `session`: after it applied, or before."""
    loses = "cannot use its private repositories or push" if applied else \
        "would lose access to its private repositories and pushes"
    return (f"Members without two-step verification, who {loses} until they turn it on: "
            f"{', '.join(names)}")


def show(workspace: Workspace, members: list[Member], lacking: set[str] | None) -> list[str]:
    """`workspace show`: with `lacking` (to admins and the operator), each member's 2SV."""
    lines = [f"workspace:    {workspace.name}",
             f"require-2sv:  {policy(workspace.require_2sv, workspace.session_window)}",
             f"members:      {len(members)}"]
    for member in members:
        note = ""
        if lacking is not None:
            note = "  2SV off" if member.account in lacking else "  2SV on"
            if member.account in lacking and workspace.require_2sv != "off":
                note += " (does not meet the policy)"
        lines.append(f"  {member.account}\t{member.role}{note}")
    return lines
