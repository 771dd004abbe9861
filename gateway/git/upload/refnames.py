"""Which ref names are valid, and which a list of `ref-prefix`es asks for.

The rules are git-check-ref-format's, as dulwich's `check_ref_format` applies them to
every name it lists (a name that breaks them is skipped, as C git skips it): here as one
regular expression, because dulwich's loop over the characters costs more than the rest
of listing 20,000 refs.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

# Anything git-check-ref-format refuses: control characters, space and ~^:?*[\ and DEL;
# `..` and `@{`; an empty component, a component that starts with a dot or ends with
# `.lock`; a name that ends with `/` or `.`.
_BROKEN = re.compile(
    rb"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|\A/|/\.|\A\.|\.lock/|\.lock\Z|/\Z|\.\Z"
)


def is_valid(name: bytes) -> bool:
    """Whether `name` (with its `refs/`) is a ref name Git would list."""
    return b"/" in name and _BROKEN.search(name) is None


# For all_valid: the characters no name may hold (a packed-refs line's `^`, its space
# and its newline are counted instead), and what no name may hold or start or end with.
_GOOD_CHARS = bytes(c for c in range(0x20, 256) if c not in b"\x7f~:?*[\\") + b"\n"
_BROKEN_RUNS = (b"..", b"@{", b"//", b"/.", b".lock/", b".lock\n", b"/\n", b".\n", b" /", b" .")


def all_valid(lines: bytes, count: int) -> bool:
    """Whether every name in `count` lines `HEX refs/NAME` (each maybe followed by a line
    `^HEX`) is valid, checked on all the lines at once with bytes methods: a regular
    expression per name would cost as much as the rest of reading packed-refs. False
    means only that some name may be broken: then each is checked with `is_valid`."""
    return (
        not lines.translate(None, _GOOD_CHARS)
        and lines.count(b" ") == count
        and lines.count(b" refs/") == count
        and lines.count(b"^") == lines.count(b"\n^") + lines.startswith(b"^")
        and not any(run in lines for run in _BROKEN_RUNS)
    )


class Prefixes:
    """The names v2's `ref-prefix` lines ask for: a name is wanted when it starts with
    any of them; no prefixes at all means every name."""

    def __init__(self, prefixes: Iterable[bytes] = ()) -> None:
        minimal: list[bytes] = []
        for prefix in sorted(set(prefixes)):
            # Sorted, a prefix comes right after any shorter prefix of itself.
            if not minimal or not prefix.startswith(minimal[-1]):
                minimal.append(prefix)
        self.minimal = minimal  # sorted; none is a prefix of another

    @property
    def everything(self) -> bool:
        return not self.minimal or self.minimal[0] == b""

    def wants(self, name: bytes) -> bool:
        if self.everything:
            return True
        # Of prefixes none of which starts another, only the last one <= name can match.
        at = bisect.bisect_right(self.minimal, name) - 1
        return at >= 0 and name.startswith(self.minimal[at])
