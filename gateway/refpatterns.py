"""Branch-rule patterns: what an admin types, checked, and what it matches.

Git's wildmatch as refspecs and path patterns use it, on the full ref name: a pattern
that does not start with `refs/` means `refs/heads/PATTERN`; `*` matches within one
component (never a `/`), `?` one character of a component, and `**`, only as a whole
component, any number of components (none included): `release/**` matches every ref
below `release/`, `**/wip` matches `wip` and `a/b/wip`. Anything else is literal.

Refused, with one line saying why: an empty pattern, control characters, a trailing
`/`, `..`, `**` inside a component, character classes (`[`), `**` typed alone (it would
read as "every ref" but means every branch: write `refs/heads/**`), a namespace that is
itself a wildcard (`refs/*/x`: say which refs), and anything `git check-ref-format`
refuses once the wildcards are set aside.
"""

from __future__ import annotations

import re
from functools import lru_cache

from dulwich.refs import Ref, check_ref_format

from .errors import Refusal
from .names import printable

MAX_PATTERN = 200
GLOBS = frozenset("*?")


def parse(text: str) -> str:
    """The full pattern (`refs/...`) for what was typed, or a Refusal saying why not."""
    problem = _problem(text)
    if problem is not None:
        raise Refusal(f"Invalid ref pattern {printable(text, 60)!r}: {problem}")
    return text if text.startswith("refs/") else "refs/heads/" + text


def _problem(text: str) -> str | None:
    if not text:
        return "it is empty"
    if len(text) > MAX_PATTERN:
        return f"it is longer than {MAX_PATTERN} characters"
    if not text.isprintable() or any(c.isspace() for c in text):
        return "it holds a control character or a space"
    if text == "**":
        return "`**` alone is every branch at every depth: write refs/heads/** if you mean it"
    if text.endswith("/"):
        return "it ends with '/'"
    if "[" in text or "\\" in text:
        return "character classes and escapes are not supported (use * and ?)"
    full = text if text.startswith("refs/") else "refs/heads/" + text
    parts = full.split("/")
    if len(parts) < 3:
        return "it must name refs below a namespace, such as refs/heads/ or refs/tags/"
    if GLOBS & set(parts[1]):
        return "the namespace after refs/ must be written out (refs/heads/, refs/tags/ ...)"
    for part in parts:
        if "**" in part and part != "**":
            return "** must be a whole component (release/**, not release**)"
    if ".." in full:
        return "it contains '..'"
    # What Git would refuse as a ref name, once each wildcard stands for a letter.
    if not check_ref_format(Ref(re.sub(r"[*?]", "x", full).encode())):
        return "it is not a valid ref name (see git check-ref-format)"
    return None


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A checked full pattern as a regular expression over full ref names."""
    out = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            # Any number of whole components: `a/**/b` is a/b, a/x/b...; `a/**` needs one.
            out.append(".+" if last else "(?:[^/]+/)*")
            continue
        piece = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        out.append(piece if last else piece + "/")
    return re.compile("".join(out))


def matches(pattern: str, ref: str) -> bool:
    return compile_pattern(pattern).fullmatch(ref) is not None
