"""The service layer in process: each operation audits and commits on its own, on a
temporary SQLite database, with no server."""

from __future__ import annotations

import json
import stat

import asyncssh
import pytest

from gateway import sshkeys, wording
from gateway.errors import Refusal
from gateway.kinds import KeyKind, Requirement, Role
from gateway.services import OPERATOR
from gateway.services import accounts as account_service
from gateway.services import keys as key_service
from gateway.services import repos as repo_service
from gateway.services import workspaces as workspace_service
from gateway.store import audit, keys, workspaces
from gateway.twosv.service import State


def new_key(comment: str = "laptop") -> sshkeys.PublicKey:
    line = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    return sshkeys.parse_line(f"{line.split()[0]} {line.split()[1]} {comment}")


@pytest.fixture
async def db(backend):
    connection = await backend.connect()
    yield connection
    await connection.close()


@pytest.fixture
def hooks_dir(tmp_path):
    """A hooks directory whose one 2sv-event.d hook appends each event to events.jsonl."""
    hooks = tmp_path / "hooks"
    (hooks / "2sv-event.d").mkdir(parents=True)
    hook = hooks / "2sv-event.d" / "record"
    hook.write_text(f"#!/bin/sh\ncat >> {tmp_path / 'events.jsonl'}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hooks


def hook_events(tmp_path) -> list[dict]:
    path = tmp_path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def rows(backend) -> list[tuple[str, str, str, str]]:
    """The audit log as another connection sees it: only what was committed."""
    other = await backend.connect()
    try:
        return [(e.actor, e.action, e.target, e.detail) for e in await audit.read(other, None, 100)]
    finally:
        await other.close()


async def test_creating_an_account_audits_commits_and_tells_the_hooks(
    backend, db, tmp_path, hooks_dir
):
    key = new_key()
    created = await account_service.create(
        db, "alice", None, [key], actor=OPERATOR, hooks_dir=hooks_dir
    )
    assert created.account.name == "alice"
    assert created.keys == [key_service.AddedKey("alice", key.fingerprint, "laptop")]
    assert await rows(backend) == [
        ("operator", "account.add", "alice", ""),
        ("operator", "key.add", "alice", key.fingerprint),
    ]
    assert [(e["event"], e["account"], e["detail"]) for e in hook_events(tmp_path)] == [
        ("key.add", "alice", key.fingerprint)
    ]


async def test_a_key_in_use_leaves_no_account_behind(backend, db, tmp_path, hooks_dir):
    key = new_key()
    await account_service.create(db, "alice", None, [key], actor=OPERATOR, hooks_dir=hooks_dir)
    with pytest.raises(Refusal, match="already in use: it logs in to account alice"):
        await account_service.create(db, "bob", None, [key], actor=OPERATOR, hooks_dir=hooks_dir)
    await db.rollback()  # what closing the CLI's connection does
    with pytest.raises(Refusal, match="No such account: bob"):
        await account_service.get(db, "bob")
    assert [r[1] for r in await rows(backend)] == ["account.add", "key.add"]


async def test_names_are_checked_before_anything_changes(backend, db, tmp_path, hooks_dir):
    with pytest.raises(Refusal):
        await account_service.create(
            db, "Not A Name", None, [], actor=OPERATOR, hooks_dir=hooks_dir
        )
    with pytest.raises(Refusal):
        await workspace_service.create(db, "../etc", False, actor=OPERATOR)
    assert await rows(backend) == []


async def test_the_operator_removes_plain_keys_only(backend, db, tmp_path, hooks_dir):
    plain, spare = new_key("plain"), new_key("spare")
    created = await account_service.create(
        db, "alice", None, [plain, spare], actor=OPERATOR, hooks_dir=hooks_dir
    )
    await keys.set_kind(db, spare.fingerprint, KeyKind.SECURITY_KEY)
    await db.commit()

    def ssh(args: str) -> str:
        return f"ssh git@host {args}"

    with pytest.raises(Refusal, match="only its owner can remove it: ssh git@host security-key"):
        await key_service.remove_by_operator(db, spare.fingerprint, actor=OPERATOR, ssh_command=ssh)
    removed = await key_service.remove_by_operator(
        db, plain.fingerprint, actor=OPERATOR, ssh_command=ssh
    )
    assert removed.key.fingerprint == plain.fingerprint
    assert [k.fingerprint for k in removed.left] == [spare.fingerprint]
    assert (await rows(backend))[-1] == ("operator", "key.remove", "alice", plain.fingerprint)
    report = wording.keys_left(created.account.name, removed.left)
    assert report[0] == "alice still has 1 key(s) that log in:"
    assert "security key, added" in report[1]
    assert report[2].endswith("to stop every login at once: gateway account disable alice")
    assert wording.keys_left("bob", []) == ["bob has no key left that logs in."]


async def test_an_owner_removes_their_own_key_as_an_event(backend, db, tmp_path, hooks_dir):
    plain, other = new_key("plain"), new_key("other")
    alice = (
        await account_service.create(
            db, "alice", None, [plain], actor=OPERATOR, hooks_dir=hooks_dir
        )
    ).account
    await account_service.create(db, "bob", None, [other], actor=OPERATOR, hooks_dir=hooks_dir)
    with pytest.raises(Refusal, match=r"No key .* on your account"):
        await key_service.remove_own(
            db, alice.id, "alice", other.fingerprint, ssh_command=str, hooks_dir=hooks_dir
        )
    await key_service.remove_own(
        db,
        alice.id,
        "alice",
        plain.fingerprint,
        ssh_command=str,
        hooks_dir=hooks_dir,
        key_fingerprint=plain.fingerprint,
        remote_addr="192.0.2.1",
    )
    assert (await rows(backend))[-1] == ("alice", "key.remove", "alice", plain.fingerprint)
    last = hook_events(tmp_path)[-1]
    assert (last["event"], last["key_fingerprint"], last["remote_addr"]) == (
        "key.remove",
        plain.fingerprint,
        "192.0.2.1",
    )


async def test_workspace_requirement_and_members(backend, db, tmp_path, hooks_dir):
    await account_service.create(
        db, "alice", None, [new_key()], actor=OPERATOR, hooks_dir=hooks_dir
    )
    workspace = await workspace_service.create(db, "acme", True, actor=OPERATOR)
    member = await workspace_service.add_member(db, "acme", "alice", "admin", actor=OPERATOR)
    assert member.role is Role.ADMIN
    assert await workspaces.role_of(db, workspace.id, 1) == Role.ADMIN == "admin"
    assert await workspace_service.members_without_2sv(db, workspace.id) == ["alice"]

    with pytest.raises(Refusal, match="Invalid policy: 'sometimes'"):
        workspace_service.check_requirement("sometimes", None)
    with pytest.raises(Refusal, match="Invalid window: 0 minutes"):
        workspace_service.check_requirement("session", 0)
    current = await workspace_service.get(db, "acme")
    assert current.require_2sv == Requirement.ON
    change = await workspace_service.set_requirement(db, current, "session", 30, actor="alice")
    assert (change.before, change.after, change.window) == ("on", Requirement.SESSION, 30)
    assert wording.policy_changed(change.workspace, change.after, change.window) == (
        'Workspace "acme" now requires: session (a verified two-step session, 30 min window).'
    )

    await workspace_service.remove_member(db, "acme", "alice", actor=OPERATOR)
    with pytest.raises(Refusal, match="alice is not a member of acme"):
        await workspace_service.remove_member(db, "acme", "alice", actor=OPERATOR)
    assert (await rows(backend))[2:] == [
        ("operator", "workspace.add", "acme", ""),
        ("operator", "workspace.require_2sv", "acme", "off -> on"),
        ("operator", "member.add", "alice", "acme admin"),
        ("alice", "workspace.require_2sv", "acme", "on -> session, window 30 min"),
        ("operator", "member.remove", "alice", "acme"),
    ]


async def test_repositories_and_access_keys(backend, db, tmp_path, hooks_dir):
    repos_dir, trash_dir = tmp_path / "repos", tmp_path / "trash"
    await workspace_service.create(db, "acme", False, actor=OPERATOR)
    path = await repo_service.create(db, repos_dir, "acme/widgets", False, "main", actor=OPERATOR)
    assert str(path) == "acme/widgets"
    with pytest.raises(Refusal, match="Repository already exists: acme/widgets"):
        await repo_service.create(db, repos_dir, "acme/Widgets", False, "main", actor=OPERATOR)
    repo = await repo_service.get(db, "acme/widgets")
    key = new_key("ci")
    added = await workspace_service.add_access_keys(
        db, repo, [key], None, False, actor=OPERATOR, hooks_dir=hooks_dir
    )
    assert [(a.title, a.mode) for a in added] == [("ci", "read")]
    assert hook_events(tmp_path)[-1]["account"] == "access-key:acme/widgets"
    await workspace_service.remove_access_key(db, key.fingerprint, actor=OPERATOR)
    removed = await repo_service.remove(db, repos_dir, trash_dir, "acme/widgets", actor=OPERATOR)
    assert removed.moved_to is not None and removed.moved_to.is_relative_to(trash_dir)
    assert [r[1:] for r in await rows(backend)][1:] == [
        ("repo.add", "acme/widgets", "private"),
        ("access_key.add", "acme/widgets", f"{key.fingerprint} read"),
        ("access_key.remove", "acme/widgets", key.fingerprint),
        ("repo.remove", "acme/widgets", str(removed.moved_to)),
    ]


def test_two_step_hints_are_worded_once():
    def ssh(args: str) -> str:
        return f"ssh -p 2222 git@host {args}"

    assert wording.twosv_state(State(False, 0, 0, 0), ssh) == [
        "Two-step verification is disabled.",
        "Turn it on with: ssh -p 2222 git@host 2sv enable",
    ]
    assert wording.twosv_state(State(True, 1, 3, 10), ssh) == [
        "Two-step verification is enabled (totp, security-key); 3 of 10 recovery codes left."
    ]
    assert wording.few_codes_left(1, ssh) == (
        "Warning: only 1 recovery codes left. Get a new set with: "
        "ssh -p 2222 git@host recovery-codes regenerate"
    )
