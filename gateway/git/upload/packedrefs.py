"""The `packed-refs` file, read as fast as Python can: what a listing of refs asks of it.

A repository with tens of thousands of refs keeps nearly all of them here. Its header
says what the file promises (`# pack-refs with: peeled fully-peeled sorted`): with
`peeled`, the `^` line after an annotated tag's ref is its peeled object and a ref
without one does not peel (dulwich reads it so, whichever refs the header covers); with
`sorted`, the refs are in byte order, so the refs under a prefix are found by bisection
in the file's bytes and only they are parsed. The whole file is parsed with one regular
expression, not line by line. Lines that are not a ref (broken ones too) are skipped,
and so are names that are not valid ref names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import refnames

# A ref line and the peeled line that may follow it.
_RECORD = re.compile(
    rb"^([0-9a-f]{40}(?:[0-9a-f]{24})?) ([^\n]+)\n(?:\^([0-9a-f]{40}(?:[0-9a-f]{24})?)\n)?",
    re.MULTILINE,
)
HEADER = b"# pack-refs with:"
# More prefixes than this are matched against every name instead of bisected one by one.
MAX_BISECTIONS = 64


@dataclass
class PackedRefs:
    refs: dict[bytes, bytes] = field(default_factory=dict)  # name -> hex object name
    peeled: dict[bytes, bytes] = field(default_factory=dict)  # name -> what its tag peels to
    # Whether a ref without a `^` line is known not to be a tag (the header's `peeled`).
    peel_known: bool = False


class PackedRefsFile:
    """One repository's `packed-refs`, read once."""

    def __init__(self, git_dir: str) -> None:
        try:
            with open(os.path.join(git_dir, "packed-refs"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self.data = data
        traits: set[bytes] = set()
        self.body = 0
        if data.startswith(HEADER):
            self.body = data.index(b"\n") + 1
            traits = set(data[len(HEADER) : self.body].split())
        self.peel_known = b"peeled" in traits
        self.sorted = b"sorted" in traits

    def read(self, prefixes: refnames.Prefixes) -> PackedRefs:
        """The refs `prefixes` asks for."""
        if prefixes.everything or not self.sorted or len(prefixes.minimal) > MAX_BISECTIONS:
            found = self._parse(self.body, len(self.data), prefixes)
        else:
            found = PackedRefs(peel_known=self.peel_known)
            for prefix in prefixes.minimal:
                self._parse_prefix(prefix, found)
        return found

    def get(self, name: bytes) -> tuple[bytes, bytes | None] | None:
        """One ref by its exact name: (object, peeled or None), or None."""
        found = self.read(refnames.Prefixes([name]))
        if name not in found.refs:
            return None
        return found.refs[name], found.peeled.get(name)

    def _parse(self, start: int, end: int, prefixes: refnames.Prefixes) -> PackedRefs:
        records = _RECORD.findall(self.data, start, end)
        if not refnames.all_valid(self.data[start:end], len(records)):
            records = [r for r in records if refnames.is_valid(r[1])]
        if not prefixes.everything:
            records = [r for r in records if prefixes.wants(r[1])]
        return PackedRefs(
            refs={name: sha for sha, name, _ in records},
            peeled={name: peel for _, name, peel in records if peel},
            peel_known=self.peel_known,
        )

    def _parse_prefix(self, prefix: bytes, found: PackedRefs) -> None:
        # Sorted: the names under a prefix are together, after every name < prefix.
        start = self._first_record(lambda name: name >= prefix)
        end = self._first_record(lambda name: name > prefix and not name.startswith(prefix))
        part = self._parse(start, end, refnames.Prefixes([prefix]))
        found.refs.update(part.refs)
        found.peeled.update(part.peeled)

    def _record_from(self, pos: int) -> int:
        """Where the first ref line starting at `pos` or later begins (len: none)."""
        data, end = self.data, len(self.data)
        if pos > self.body:
            newline = data.find(b"\n", pos - 1)
            pos = end if newline < 0 else newline + 1
        if data[pos : pos + 1] == b"^":
            newline = data.find(b"\n", pos)
            pos = end if newline < 0 else newline + 1
        return pos

    def _name_at(self, record: int) -> bytes:
        end = self.data.find(b"\n", record)
        space = self.data.find(b" ", record, end)
        return b"" if space < 0 else self.data[space + 1 : end]  # b"": a broken line

    def _first_record(self, reached: Callable[[bytes], bool]) -> int:
        """The start of the first ref line whose name has `reached` (false for the names
        before it, true from there on): the smallest position from which the next ref
        line's name has it, by bisection."""
        lo, hi = self.body, len(self.data)
        while lo < hi:
            mid = (lo + hi) // 2
            record = self._record_from(mid)
            if record >= len(self.data) or reached(self._name_at(record)):
                hi = mid
            else:
                lo = mid + 1
        return self._record_from(lo)
