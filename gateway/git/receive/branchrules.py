"""Branch rules in the push pipeline: each ref update's kind (create, delete,
fast-forward, force), then the one decision per ref (`decision.decide_ref`) with the
rules and pusher the server put in the job. Runs after the connectivity check (every
object a new tip needs is here) and before the hooks, so that no hook sees a refused
ref and no ref moves before its rules allowed it.

Whether an update is a fast-forward is read from the objects as they are (never
replacements): the old commit must be an ancestor of the new one. The walk goes from
the new tip down every parent, so it is exact whatever the commit dates say. Where a
rule matches the ref it walks as far as it must; elsewhere the kind is
only recorded (the audit row, for `--dry-run`) and the walk stops after WALK_BUDGET
commits, leaving the kind unknown ("") rather than guessed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dulwich.object_store import BaseObjectStore
from dulwich.objects import Commit, ObjectID

from ... import decision
from ...decision import RefRule, UpdateKind
from . import signed

ZERO = b"0" * 40
WALK_BUDGET = 10_000  # commits walked to record the kind of an update no rule asks about


@dataclass(frozen=True)
class Settings:
    """The part of PushSettings the rules need."""

    rules: tuple[RefRule, ...]
    pusher: decision.Pusher
    signing_keys: tuple[signed.SigningKey, ...]
    ssh_command: str


def kind_of(old: bytes, new: bytes, objects: BaseObjectStore, needed: bool) -> UpdateKind | None:
    """The update's kind; None (unknown) only when not `needed` (no rule matches) and
    the walk ran out of budget."""
    if old == ZERO:
        return UpdateKind.CREATE
    if new == ZERO:
        return UpdateKind.DELETE
    found = is_ancestor(old, new, objects, None if needed else WALK_BUDGET)
    if found is None:
        return None
    return UpdateKind.FAST_FORWARD if found else UpdateKind.FORCE


def is_ancestor(
    old: bytes, new: bytes, objects: BaseObjectStore, budget: int | None = None
) -> bool | None:
    """Whether commit `old` is `new` or one of its ancestors (both must be commits);
    None if `budget` commits were walked without an answer."""
    if old == new:
        return _is_commit(new, objects)
    if not (_is_commit(old, objects) and _is_commit(new, objects)):
        return False
    stack, seen = [new], {new}
    while stack:
        if budget is not None and len(seen) > budget:
            return None
        commit = objects[ObjectID(stack.pop())]
        assert isinstance(commit, Commit)
        for parent in commit.parents:
            if parent == old:
                return True
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return False


def _is_commit(sha: bytes, objects: BaseObjectStore) -> bool:
    try:
        return objects.get_raw(ObjectID(sha))[0] == Commit.type_num
    except KeyError:
        return False


def check(
    updates: list[tuple[bytes, bytes, bytes]],
    settings: Settings,
    objects: BaseObjectStore,
    refs: Callable[[], Mapping[bytes, bytes]],
    say: Callable[[bytes], None],
) -> tuple[dict[bytes, str], dict[bytes, bytes]]:
    """({ref: kind, "" if unknown} of every update, {ref: `ng` reason} of those the rules refuse),
    for (old, new, ref) updates that passed every earlier check. How to comply goes
    to `say` as `remote:` lines. `objects`: the quarantine with the store its alternate
    (or the store); `refs`: the repository's refs, read only if a signing rule asks."""
    refs = functools.cache(refs)
    kinds: dict[bytes, str] = {}
    refused: dict[bytes, bytes] = {}
    now = time.time()
    for old, new, ref in updates:
        name = ref.decode("utf-8", "replace")
        matching = tuple(r for r in settings.rules if r.applies_to(name))
        # A ref a rule covers is walked as far as needed; the rest only for the record.
        kind = kind_of(old, new, objects, needed=bool(matching))
        kinds[ref] = kind or ""
        if kind is None or not matching:
            continue
        unsigned = None
        signing = [r for r in matching if r.require_signed]
        if signing and kind is not UpdateKind.DELETE:
            own = settings.pusher.account if any(r.own_keys for r in signing) else None
            # What other refs under the same rules hold was checked when it came (or
            # predates the rule): a new branch answers for its own commits only.
            known = [
                sha
                for other, sha in refs().items()
                if other != ref
                and any(r.applies_to(other.decode("utf-8", "replace")) for r in signing)
            ]
            unsigned = signed.refusal(objects, old, new, settings.signing_keys, own, known)
        verdict = decision.decide_ref(
            settings.pusher, matching, name, kind, now, unsigned, settings.ssh_command
        )
        if isinstance(verdict, decision.Deny):
            first, *more = verdict.message.split("\n")
            refused[ref] = first.encode("utf-8", "replace")
            for line in more:
                say(line.encode("utf-8", "replace") + b"\n")
    return kinds, refused
