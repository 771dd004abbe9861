"""The access decision as a table: every role x visibility x policy x 2SV state x
session state x action, plus missing repositories and access keys; and per ref, every
pusher x branch rule kind x update kind x 2SV session state."""

from __future__ import annotations

import itertools

import pytest

from gateway.decision import (
    ACCESS_KEY,
    Action,
    Allow,
    Deny,
    Identity,
    Pusher,
    RefRule,
    RepoFacts,
    TwoSVFacts,
    UpdateKind,
    decide,
    decide_ref,
    may_push,
)

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


# --- per ref: branch rules -------------------------------------------------------------

RULES = {
    "none": None,
    "push-admin": RefRule("refs/heads/main", push=("admin",)),
    "push-alice": RefRule("refs/heads/main", push=("alice",)),
    "no-force": RefRule("refs/heads/main", no_force=True),
    "no-delete": RefRule("refs/heads/main", no_delete=True),
    "no-create": RefRule("refs/heads/main", no_create=True),
    "2sv-session": RefRule("refs/heads/main", require_2sv_session=True),
    "signed": RefRule("refs/heads/main", require_signed=True),
}
PUSHERS = {  # who, with which key: (role, key kind, account)
    "write": ("write", "auth", "bob"),
    "admin": ("admin", "auth", "carol"),
    "alice": ("write", "auth", "alice"),
    "access-key": ("write", ACCESS_KEY, "access-key:ci"),
}
TWOSV_STATES = {"none": 0.0, "open": NOW - 60, "expired": NOW - 16 * 60, "security-key": 0.0}
UNSIGNED = "0123abcd: unsigned"


def expected_ref(rule, who, kind, state):
    role, key_kind, account = PUSHERS[who]
    name = "rule refs/heads/main"
    if rule == "push-admin" and role != "admin":
        return f"{name}: only admin may push"
    if rule == "push-alice" and account != "alice":
        return f"{name}: only alice may push"
    if rule == "no-force" and kind is UpdateKind.FORCE:
        return f"{name}: force-push not allowed (not a fast-forward)"
    if rule == "no-delete" and kind is UpdateKind.DELETE:
        return f"{name}: deletion not allowed"
    if rule == "no-create" and kind is UpdateKind.CREATE:
        return f"{name}: creation not allowed"
    if rule == "2sv-session" and key_kind == ACCESS_KEY:
        return f"{name}: needs a two-step session, which an access key cannot open"
    if rule == "2sv-session" and state not in ("open", "security-key"):
        return f"{name}: needs a two-step session"
    if rule == "signed" and kind is not UpdateKind.DELETE:
        return f"{name}: {UNSIGNED}"
    return None


REF_CASES = list(itertools.product(RULES, PUSHERS, tuple(UpdateKind), TWOSV_STATES))


@pytest.mark.parametrize("rule,who,kind,state", REF_CASES)
def test_ref_decision_table(rule, who, kind, state):
    role, key_kind, account = PUSHERS[who]
    if state == "security-key" and key_kind != ACCESS_KEY:
        key_kind = "security-key"
    person = Pusher(account, role, "SHA256:k", key_kind, TWOSV_STATES[state], 15)
    rules = () if RULES[rule] is None else (RULES[rule],)
    verdict = decide_ref(person, rules, "refs/heads/main", kind, NOW, UNSIGNED, ssh=SSH)
    want = expected_ref(rule, who, kind, state)
    if want is None:
        assert isinstance(verdict, Allow)
    else:
        assert isinstance(verdict, Deny) and verdict.message.split("\n")[0] == want
    # A ref no rule matches is never refused by the rules.
    assert isinstance(decide_ref(person, rules, "refs/heads/other", kind, NOW, UNSIGNED), Allow)


def test_ref_table_has_every_combination():
    assert len(REF_CASES) == 8 * 4 * 4 * 4


def test_two_step_refusal_names_the_ref_and_how_to_comply():
    person = Pusher("bob", "write", "SHA256:k", "auth", 0.0, 15)
    rule = RefRule("refs/heads/release/*", require_2sv_session=True)
    verdict = decide_ref(
        person, (rule,), "refs/heads/release/1.0", UpdateKind.FAST_FORWARD, NOW, ssh=SSH
    )
    assert isinstance(verdict, Deny)
    assert verdict.message.split("\n")[1] == (
        "refs/heads/release/1.0 needs an open two-step session for the key in use. "
        f"Open one with: {SSH} 2sv verify (or log in with a security key)"
    )


def test_several_matching_rules_combine():
    person = Pusher("carol", "admin", "SHA256:k", "auth", 0.0, 15)
    rules = (
        RefRule("refs/heads/**", push=("admin",)),
        RefRule("refs/heads/release/*", no_delete=True),
    )
    ref = "refs/heads/release/2"
    assert isinstance(decide_ref(person, rules, ref, UpdateKind.FORCE, NOW), Allow)
    refused = decide_ref(person, rules, ref, UpdateKind.DELETE, NOW)
    assert refused.message == "rule refs/heads/release/*: deletion not allowed"
    writer = Pusher("bob", "write", "SHA256:k", "auth", 0.0, 15)
    assert decide_ref(writer, rules, ref, UpdateKind.CREATE, NOW).message == (
        "rule refs/heads/**: only admin may push"
    )


def test_push_names_a_key_and_accounts_named_like_roles():
    key = Pusher("access-key:ci", "write", "SHA256:ci", ACCESS_KEY)
    assert may_push(("key:SHA256:ci",), key) and not may_push(("admin",), key)
    assert may_push(("write",), key)  # an access key with write holds the write role
    admin_named = Pusher("admin", "write", "SHA256:k")
    assert not may_push(("admin",), admin_named)  # the role, not the account
    assert may_push(("account:admin",), admin_named)
    assert not may_push(("ci",), Pusher("ci", "write", "SHA256:x", ACCESS_KEY))
