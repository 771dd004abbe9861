"""The access decision as a table: every role x visibility x policy x 2SV state x
session state x action, plus missing repositories and access keys."""

from __future__ import annotations

import itertools

import pytest

from gateway.decision import Action, Allow, Deny, Identity, RepoFacts, TwoSVFacts, decide

NOW = 1_000_000.0
SSH = "ssh -p 2222 git@example.org"
ALICE = Identity("alice", 1, "SHA256:laptop", "laptop")
NOT_FOUND = "Repository not found: acme/w"
DENIED = "Permission to acme/w denied to alice."
NEEDS_2SV = (
    'Workspace "acme" requires two-step verification.\nTurn it on with: ' + SSH + " 2sv enable"
)
NEEDS_SESSION = (
    'Workspace "acme" requires a verified two-step session.\nOpen one with: '
    + SSH
    + ' 2sv verify\nIt must be opened with the key used here: "laptop" '
    "(SHA256:laptop); if ssh offers another key first, add -i with this key's file."
)
SESSIONS = {"none": None, "open": NOW - 60, "expired": NOW - 16 * 60}


def expected(role, public, policy, twosv, session, action):
    if role is None and not public:
        return NOT_FOUND
    if action is Action.WRITE and role not in ("write", "admin"):
        return DENIED
    if policy != "off" and (action is Action.WRITE or not public):
        if not twosv:
            return NEEDS_2SV
        if policy == "session" and session != "open":
            return NEEDS_SESSION
    return None


CASES = list(
    itertools.product(
        (None, "read", "write", "admin"),
        (False, True),
        ("off", "on", "session"),
        (False, True),
        tuple(SESSIONS),
        tuple(Action),
    )
)


@pytest.mark.parametrize("role,public,policy,twosv,session,action", CASES)
def test_decision_table(role, public, policy, twosv, session, action):
    repo = RepoFacts("acme/w", True, 7, "acme/w", public, role, "acme", policy, 15)
    facts = TwoSVFacts(twosv, SESSIONS[session] if twosv else None)
    decision = decide(ALICE, facts, repo, action, NOW, ssh=SSH)
    want = expected(role, public, policy, twosv, session, action)
    if want is None:
        assert isinstance(decision, Allow)
    else:
        assert isinstance(decision, Deny) and decision.message == want


def test_table_has_every_combination():
    assert len(CASES) == 4 * 2 * 3 * 2 * 3 * 2


@pytest.mark.parametrize("action", tuple(Action))
def test_missing_repository(action):
    missing = RepoFacts("acme/nope", False)
    decision = decide(ALICE, TwoSVFacts(True, NOW), missing, action, NOW, ssh=SSH)
    assert decision == Deny("Repository not found: acme/nope", "not found or not readable")


def test_session_window_edges():
    repo = RepoFacts("acme/w", True, 7, "acme/w", False, "write", "acme", "session", 1)
    opened = TwoSVFacts(True, NOW)
    assert isinstance(decide(ALICE, opened, repo, Action.READ, NOW + 59.9, ssh=SSH), Allow)
    assert isinstance(decide(ALICE, opened, repo, Action.READ, NOW + 60, ssh=SSH), Deny)
    assert isinstance(decide(ALICE, opened, repo, Action.READ, NOW - 1, ssh=SSH), Deny)


def test_security_key_login_is_a_session():
    repo = RepoFacts("acme/w", True, 7, "acme/w", False, "write", "acme", "session", 15)
    with_sk = Identity("alice", 1, "SHA256:yubi", "yubi", key_kind="security-key")
    assert isinstance(decide(with_sk, TwoSVFacts(True, None), repo, Action.WRITE, NOW), Allow)


@pytest.mark.parametrize("write", (False, True))
@pytest.mark.parametrize("policy", ("off", "on", "session"))
def test_access_keys_are_bound_and_exempt_from_policy(write, policy):
    deploy = Identity("access-key:ci", 0, "SHA256:ci", "ci", access_repo_id=7, access_write=write)
    bound = RepoFacts("acme/w", True, 7, "acme/w", False, None, "acme", policy, 15)
    other = RepoFacts("acme/x", True, 8, "acme/x", True, None, "acme", "off", 15)
    none = TwoSVFacts()
    assert isinstance(decide(deploy, none, bound, Action.READ, NOW), Allow)
    push = decide(deploy, none, bound, Action.WRITE, NOW)
    if write:
        assert isinstance(push, Allow)
    else:
        assert push.message == 'Permission to acme/w denied to access key "ci" (read-only).'
    for action in Action:  # even a public repository elsewhere is out of reach
        assert decide(deploy, none, other, action, NOW).message == "Repository not found: acme/x"
