"""Which ref updates a push may make, decided before any ref moves (SPEC §7).

A name is checked by C git's rules first (`funny refname`: outside `refs/`, against
check-ref-format, or one component under `refs/`), then against the namespaces the
operator lets users push to (setting `push_ref_namespaces`), then for characters that
make it read as something else on a terminal (setting `allow_unusual_ref_names`).

Then the directory/file conflicts: `refs/heads/a` and `refs/heads/a/b` cannot both
exist (a loose ref is a file, and the other would need it as a directory). They are
checked against every existing ref, loose and packed, and within the push itself, with
C git's messages. A push that deletes `a` and creates `a/b` is allowed, with or without
`--atomic`: deletions are applied first.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from dulwich.refs import check_ref_format

DEFAULT_NAMESPACES = ("refs/heads/", "refs/tags/")
# Code points that make a name show as something other than what it is: the C1 controls
# (U+009B is a terminal's CSI) and Unicode's Bidi_Control set (U+202E turns text around).
UNUSUAL = frozenset(
    map(
        chr,
        [
            *range(0x80, 0xA0),
            0x061C,
            0x200E,
            0x200F,
            *range(0x202A, 0x202F),
            *range(0x2066, 0x206A),
        ],
    )
)
# `git checkout HEAD` and friends take a branch called HEAD for HEAD itself.
CONFUSING = frozenset([b"refs/heads/HEAD"])


def name_problem(ref: bytes, namespaces: Sequence[str], allow_unusual: bool) -> bytes | None:
    """Why `ref` may not be pushed (the `ng` reason), or None."""
    if not ref.startswith(b"refs/") or b"/" not in ref[5:] or not check_ref_format(ref):
        return b"funny refname"
    try:
        text = ref.decode("utf-8")
    except UnicodeDecodeError:
        return b"funny refname"
    if not any(text.startswith(prefix) for prefix in namespaces):
        return f"only {_listed(namespaces)} may be pushed".encode()
    if not allow_unusual:
        if any(c in UNUSUAL for c in text):
            return b"ref name with a control or bidirectional character"
        if ref in CONFUSING:
            return b"a branch may not be called HEAD"
    return None


def valid_namespace(prefix: str) -> bool:
    """A setting's entry: `refs/` itself, or a ref name's first components and a slash."""
    return prefix == "refs/" or (
        prefix.startswith("refs/")
        and prefix.endswith("/")
        and check_ref_format(prefix.encode() + b"x")
    )


def _listed(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def conflicts(
    existing: Iterable[bytes], updates: Sequence[tuple[bytes, bool]]
) -> dict[bytes, bytes]:
    """{ref: C git's message} for each (ref, is_delete) of a push that cannot be made.

    `existing` is every ref now (loose and packed). The deletions of the push are taken
    as done, so that `a` can give way to `a/b` in one push; two writes that conflict with
    each other are both refused, as neither comes first.
    """
    deleted = {ref for ref, is_delete in updates if is_delete}
    after = sorted(set(existing) - deleted)
    written = sorted({ref for ref, is_delete in updates if not is_delete})
    found: dict[bytes, bytes] = {}
    after_set, written_set = set(after), set(written)
    for ref in written:
        problem = None
        parts = ref.split(b"/")
        for i in range(2, len(parts)):
            prefix = b"/".join(parts[:i])
            if prefix in after_set:
                problem = b"'%s' exists; cannot create '%s'" % (prefix, ref)
            elif prefix in written_set:
                problem = b"cannot process '%s' and '%s' at the same time" % (prefix, ref)
            if problem:
                break
        if problem is None:
            below = _first_below(after, ref)
            if below is not None:
                problem = b"'%s' exists; cannot create '%s'" % (below, ref)
        if problem is None:
            below = _first_below(written, ref)
            if below is not None:
                problem = b"cannot process '%s' and '%s' at the same time" % (ref, below)
        if problem is not None:
            found[ref] = b"cannot lock ref '%s': %s" % (ref, problem)
    return found


def _first_below(ordered: list[bytes], ref: bytes) -> bytes | None:
    """The first name in the sorted list that has `ref` as a directory."""
    i = bisect_left(ordered, ref + b"/")
    if i < len(ordered) and ordered[i].startswith(ref + b"/"):
        return ordered[i]
    return None
