"""Unit tests of the ref checks (gateway/git/receive/refcheck.py) and their two settings."""

from __future__ import annotations

import io

import pytest

from gateway import config
from gateway.errors import Refusal
from gateway.git.receive import refcheck
from gateway.git.workers.job import Job

DEFAULT = refcheck.DEFAULT_NAMESPACES


@pytest.mark.parametrize(
    "ref, reason",
    [
        (b"refs/heads/main", None),
        (b"refs/tags/v1.0", None),
        (b"refs/heads/caf\xc3\xa9", None),  # plain non-ASCII is fine
        (b"refs/foo", b"funny refname"),
        (b"refs/heads", b"funny refname"),
        (b"refs/", b"funny refname"),
        (b"HEAD", b"funny refname"),
        (b"refs/heads/a..b", b"funny refname"),
        (b"refs/heads/\xff", b"funny refname"),
        (b"refs/heads/x.lock", b"funny refname"),
        (b"refs/notes/commits", b"only refs/heads/ and refs/tags/ may be pushed"),
        (b"refs/replace/" + b"1" * 40, b"only refs/heads/ and refs/tags/ may be pushed"),
        (b"refs/headsx/y", b"only refs/heads/ and refs/tags/ may be pushed"),
        (b"refs/heads/HEAD", b"a branch may not be called HEAD"),
        (b"refs/heads/a/HEAD", None),
        (b"refs/heads/x\xc2\x9by", b"ref name with a control or bidirectional character"),
        (b"refs/heads/x\xc2\x80y", b"ref name with a control or bidirectional character"),
        (b"refs/heads/x\xc2\xa0y", None),  # U+00A0 is past the C1 block
        (
            "refs/heads/evil\u202egpj".encode(),
            b"ref name with a control or bidirectional character",
        ),
        ("refs/tags/v\u2069".encode(), b"ref name with a control or bidirectional character"),
        ("refs/heads/a\u200fb".encode(), b"ref name with a control or bidirectional character"),
        ("refs/heads/a\u061cb".encode(), b"ref name with a control or bidirectional character"),
    ],
)
def test_name_problem(ref, reason):
    assert refcheck.name_problem(ref, DEFAULT, allow_unusual=False) == reason


def test_unusual_names_when_allowed_and_other_namespaces():
    assert refcheck.name_problem("refs/heads/\u202e".encode(), DEFAULT, True) is None
    assert refcheck.name_problem(b"refs/heads/HEAD", DEFAULT, True) is None
    assert refcheck.name_problem(b"refs/foo", ("refs/",), True) == b"funny refname"
    assert refcheck.name_problem(b"refs/notes/x", ("refs/",), False) is None
    assert (
        refcheck.name_problem(b"refs/x/y", ("refs/heads/",), False)
        == b"only refs/heads/ may be pushed"
    )


def test_conflicts_with_existing_refs_and_within_the_push():
    existing = [b"refs/heads/a", b"refs/heads/x/y", b"refs/heads/main"]
    found = refcheck.conflicts(
        existing,
        [
            (b"refs/heads/a/b", False),
            (b"refs/heads/x", False),
            (b"refs/heads/main", False),
            (b"refs/heads/p", False),
            (b"refs/heads/p/q/r", False),
            (b"refs/heads/pq", False),
        ],
    )
    assert found == {
        b"refs/heads/a/b": b"cannot lock ref 'refs/heads/a/b': 'refs/heads/a' exists; "
        b"cannot create 'refs/heads/a/b'",
        b"refs/heads/x": b"cannot lock ref 'refs/heads/x': 'refs/heads/x/y' exists; "
        b"cannot create 'refs/heads/x'",
        b"refs/heads/p": b"cannot lock ref 'refs/heads/p': cannot process 'refs/heads/p' "
        b"and 'refs/heads/p/q/r' at the same time",
        b"refs/heads/p/q/r": b"cannot lock ref 'refs/heads/p/q/r': cannot process "
        b"'refs/heads/p' and 'refs/heads/p/q/r' at the same time",
    }


def test_deletions_in_the_same_push_make_way():
    existing = [b"refs/heads/a", b"refs/heads/x/y"]
    assert (
        refcheck.conflicts(
            existing,
            [
                (b"refs/heads/a", True),
                (b"refs/heads/a/b", False),
                (b"refs/heads/x/y", True),
                (b"refs/heads/x", False),
            ],
        )
        == {}
    )
    # A deletion alone never conflicts.
    assert refcheck.conflicts(existing, [(b"refs/heads/a", True)]) == {}


def test_settings_reach_the_worker():
    job = Job(
        "git-receive-pack",
        "/r.git",
        push_ref_namespaces=("refs/heads/", "refs/notes/"),
        allow_unusual_ref_names=True,
        path="/bin",
    )
    header = job.header()
    assert Job.from_header(io.BytesIO(header + b"0000")) == job  # read back field by field
    settings = job.push_settings()
    assert settings.namespaces == ("refs/heads/", "refs/notes/")
    assert settings.allow_unusual_ref_names is True
    assert "GATEWAY_PUSH_REF_NAMESPACES" not in settings.hook_env  # the worker's, not the hooks'
    assert Job("git-receive-pack", "/r.git").push_settings().namespaces == DEFAULT
    assert Job("git-receive-pack", "/r.git").push_settings().allow_unusual_ref_names is False


@pytest.mark.parametrize(
    "toml, expected",
    [
        ('push_ref_namespaces = "refs/heads/"\n', "must be a list of strings"),
        ("push_ref_namespaces = []\n", "must list at least one namespace"),
        ('push_ref_namespaces = ["refs/heads"]\n', "has 'refs/heads': each must be 'refs/'"),
        ('push_ref_namespaces = ["heads/"]\n', "has 'heads/'"),
        ('push_ref_namespaces = ["refs/a..b/"]\n', "has 'refs/a..b/'"),
        ("allow_unusual_ref_names = 1\n", "must be true or false"),
    ],
)
def test_bad_values_are_refused(tmp_path, toml, expected):
    (tmp_path / "gateway.toml").write_text(toml)
    with pytest.raises(Refusal) as refused:
        config.load(str(tmp_path))
    assert expected in str(refused.value)


def test_values_from_the_file_and_the_environment(tmp_path, monkeypatch):
    (tmp_path / "gateway.toml").write_text(
        'push_ref_namespaces = ["refs/heads/", "refs/"]\nallow_unusual_ref_names = true\n'
    )
    settings = config.load(str(tmp_path))
    assert settings.push_ref_namespaces == ("refs/heads/", "refs/")
    assert settings.allow_unusual_ref_names is True
    monkeypatch.setenv("GATEWAY_PUSH_REF_NAMESPACES", "refs/heads/, refs/tags/,refs/notes/")
    settings, sources = config.load_with_sources(str(tmp_path))
    assert settings.push_ref_namespaces == ("refs/heads/", "refs/tags/", "refs/notes/")
    line = next(li for li in config.render(settings, sources) if li.startswith("push_ref_"))
    assert line.startswith(
        'push_ref_namespaces = ["refs/heads/", "refs/tags/", "refs/notes/"]'
        "  # GATEWAY_PUSH_REF_NAMESPACES"
    )
