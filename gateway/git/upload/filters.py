"""A partial clone's filter (`git clone --filter=...`): the client's spec, parsed.

The specs served, with Git's meaning (rev-list-options "--filter"):
- `blob:none`: no blobs;
- `blob:limit=N` (N as Git reads a number: decimal, 0x hex or 0 octal, and a k, m or g
  suffix for 1024, 1024^2, 1024^3): no blob of N bytes or more;
- `tree:DEPTH`: no tree or blob whose depth from the root tree is DEPTH or more (the root
  tree is at depth 0, so `tree:0` sends commits and tags only);
- `combine:A+B+...`: only what every part keeps, each part percent-encoded as Git sends it.
Objects the client names in its wants are sent whatever the filter (lazy fetches by id
rely on it). Anything else (`sparse:oid=`, `object:type=`, a malformed number) is a
FilterError whose message is the one line the user sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SERVED = "served: blob:none, blob:limit=<n>[kmg], tree:<depth>, combine:<filter>+<filter>"
UNITS = {b"": 1, b"k": 1 << 10, b"m": 1 << 20, b"g": 1 << 30}
ULONG_MAX = (1 << 64) - 1
# What Git's strtoumax (base 0) reads: hex after 0x, octal after 0, else decimal.
NUMBER = re.compile(rb"[ \t\n\v\f\r]*\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(.*)", re.DOTALL)
# Characters Git requires to be percent-encoded inside a `combine:` part.
RESERVED = frozenset(b"~`!@#$^&*()[]{}\\;'\",<>? \t\n\v\f\r")


class FilterError(ValueError):
    """A filter spec that is not served; the message is the user's one line."""


@dataclass(frozen=True)
class ObjectFilter:
    """What a filter leaves out. None: that kind of object is not filtered."""

    blob_limit: int | None = None  # blobs of this many bytes or more left out (0: all)
    tree_depth: int | None = None  # trees and blobs this deep or deeper left out

    def keeps_depth(self, depth: int) -> bool:
        return self.tree_depth is None or depth < self.tree_depth

    def keeps_size(self, size: int) -> bool:
        return self.blob_limit is None or size < self.blob_limit

    def both(self, other: ObjectFilter) -> ObjectFilter:
        """What both filters keep (combine:)."""
        return ObjectFilter(
            _least(self.blob_limit, other.blob_limit), _least(self.tree_depth, other.tree_depth)
        )


def _least(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def shown(spec: bytes, limit: int = 80) -> str:
    """The user's spec as it may be printed: printable ASCII, the rest escaped."""
    cut = spec[:limit]
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in cut)
    return text + ("..." if len(spec) > limit else "")


def parse(spec: bytes) -> ObjectFilter:
    """The filter a client's `filter` line (or `--filter=`) names; FilterError if not served."""
    try:
        return _parse(spec)
    except _Refused as exc:
        raise FilterError(f"filter '{shown(spec)}' is not served: {exc}; {SERVED}") from None


class _Refused(Exception):
    pass


def _parse(spec: bytes) -> ObjectFilter:
    if spec == b"blob:none":
        return ObjectFilter(blob_limit=0)
    if spec.startswith(b"blob:limit="):
        return ObjectFilter(blob_limit=_number(spec[len(b"blob:limit=") :], "blob:limit"))
    if spec.startswith(b"tree:"):
        return ObjectFilter(tree_depth=_number(spec[len(b"tree:") :], "tree:<depth>"))
    if spec.startswith(b"combine:"):
        return _combine(spec[len(b"combine:") :])
    if spec.startswith(b"sparse:"):
        raise _Refused("sparse filters are not served")
    raise _Refused("unknown filter")


def _number(text: bytes, what: str) -> int:
    """A number as Git's git_parse_ulong reads it (no sign, an optional unit)."""
    match = NUMBER.fullmatch(text)
    if b"-" in text or match is None or match.group(2).lower() not in UNITS:
        raise _Refused(f"{what} needs a number of bytes or levels (with k, m or g)")
    digits = match.group(1)
    if digits[:2].lower() == b"0x":
        value = int(digits[2:], 16)
    elif digits.startswith(b"0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    value *= UNITS[match.group(2).lower()]
    if value > ULONG_MAX:
        raise _Refused(f"{what} is too large")
    return value


def _combine(parts: bytes) -> ObjectFilter:
    if not parts:
        raise _Refused("combine: needs filters after it")
    combined = ObjectFilter()
    for part in parts.split(b"+"):
        if not part:
            raise _Refused("combine: has an empty part")
        bad = next((b for b in part if b in RESERVED), None)
        if bad is not None:
            raise _Refused(f"a combine: part must percent-encode '{shown(bytes([bad]))}'")
        combined = combined.both(_parse(_percent_decode(part)))
    return combined


def _percent_decode(part: bytes) -> bytes:
    """Git's url_percent_decode: %XX with two hex digits decoded, anything else kept."""
    out, at = bytearray(), 0
    while at < len(part):
        hex_pair = part[at + 1 : at + 3]
        if (
            part[at] == 0x25
            and len(hex_pair) == 2
            and all(c in b"0123456789abcdefABCDEF" for c in hex_pair)
        ):
            out.append(int(hex_pair, 16))
            at += 3
        else:
            out.append(part[at])
            at += 1
    return bytes(out)
