"""Branch-rule patterns: what they match (Git's wildcards on full ref names)."""

from __future__ import annotations

import pytest

from gateway.errors import Refusal
from gateway.refpatterns import matches, parse


@pytest.mark.parametrize(
    "pattern,ref,hit",
    [
        ("main", "refs/heads/main", True),
        ("main", "refs/heads/main2", False),
        ("main", "refs/tags/main", False),
        ("release/*", "refs/heads/release/1.0", True),
        ("release/*", "refs/heads/release/a/b", False),  # * stays within a component
        ("release/**", "refs/heads/release/a/b", True),
        ("release/**", "refs/heads/release", False),
        ("**/wip", "refs/heads/wip", True),
        ("**/wip", "refs/heads/a/b/wip", True),
        ("a/**/b", "refs/heads/a/b", True),
        ("a/**/b", "refs/heads/a/x/y/b", True),
        ("v?", "refs/heads/v1", True),
        ("v?", "refs/heads/v10", False),
        ("refs/tags/v*", "refs/tags/v1.2", True),
        ("refs/tags/v*", "refs/heads/v1.2", False),
        ("a.b", "refs/heads/axb", False),  # a dot is a dot
    ],
)
def test_matches(pattern, ref, hit):
    assert matches(parse(pattern), ref) is hit


@pytest.mark.parametrize(
    "text", ["", "**", "a/", "a b", "a\x1bb", "x..y", "a**", "refs/*/x", "refs/heads", "[ab]", ".a"]
)
def test_refused(text):
    with pytest.raises(Refusal) as refused:
        parse(text)
    assert "\n" not in refused.value.message and "\x1b" not in refused.value.message
