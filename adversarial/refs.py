"""Class "refs": hostile ref updates in pushes (receive-pack over asyncssh, a few with the
real `git push`): directory/file conflicts with loose and packed refs and within a push,
refs/replace/, funny and unusual names, refs outside the allowed namespaces, generated
names judged by C git's own `git check-ref-format`.

Handled correctly: each refused ref has its `ng` (the others their `ok`), the worker
ends cleanly, the server keeps serving, no ref moves that should not, and
`git fsck --full` is clean. The server runs with the default settings (branches and tags
only, unusual names refused).
"""

from __future__ import annotations

import asyncio
import random
import subprocess

import asyncssh

from testkit import local_git, pkt, wait_for
from testkit.sshclient import connect

from .suite import ZERO, Result, World, run

# The unusual code points (C1 controls, Unicode's Bidi_Control), written out here rather
# than taken from the gateway, so that the oracle is independent of the code it judges.
UNUSUAL = {chr(c) for c in range(0x80, 0xA0)} | {
    "\u061c",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
}
ALLOWED = ("refs/heads/", "refs/tags/")
FRAGMENTS = [
    "a",
    "b",
    "x.y",
    "v1",
    "..",
    ".",
    "/",
    "//",
    "@",
    "@{",
    "~",
    "^",
    ":",
    "?",
    "*",
    "[",
    "\\",
    " ",
    "\t",
    "\x01",
    "\x7f",
    ".lock",
    "-",
    "_",
    "HEAD",
    "\u202e",
    "\u009b",
    "\u2066",
    "\u200e",
    "\u061c",
    "\u00e9",
    "\u00a0",
    "\u200b",
    "\udcff",
]  # a lone surrogate: encoded as b"\xff", invalid UTF-8
CLEAN = ["a", "b", "x.y", "v1", "-", "_", "/c", "\u00e9", "HEAD"]
PREFIXES = [
    "refs/heads/",
    "refs/tags/",
    "refs/notes/",
    "refs/replace/",
    "refs/",
    "refs/heads",
    "refs/for/",
    "heads/",
    "",
]


def commands(lines: list[tuple[bytes, bytes, bytes]], atomic: bool = False) -> bytes:
    caps = b"report-status delete-refs" + (b" atomic" if atomic else b"")
    out = b"".join(
        pkt(old + b" " + new + b" " + ref + (b"\x00" + caps if i == 0 else b"") + b"\n")
        for i, (old, new, ref) in enumerate(lines)
    )
    return out + b"0000"


def c_git_allows(ref: bytes) -> bool:
    """C git receive-pack's rule: under refs/, and the rest passes check-ref-format with
    at least two components."""
    if not ref.startswith(b"refs/"):
        return False
    return subprocess.run(["git", "check-ref-format", ref[5:]], capture_output=True).returncode == 0


def expected_ok(ref: bytes) -> bool:
    """What the gateway's defaults allow: C git's rules, UTF-8, branches and tags only,
    no unusual code point, no refs/heads/HEAD."""
    if not c_git_allows(ref):
        return False
    try:
        text = ref.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return (
        text.startswith(ALLOWED)
        and not any(c in UNUSUAL for c in text)
        and text != "refs/heads/HEAD"
    )


def generated_names(count: int, seed: int = 47) -> list[bytes]:
    rng = random.Random(seed)
    names = []
    for n in range(count):
        body = "".join(
            rng.choice(CLEAN if rng.random() < 0.75 else FRAGMENTS)
            for _ in range(rng.randint(1, 4))
        )
        # A component of its own per name: no two generated refs conflict with each other.
        names.append((rng.choice(PREFIXES) + f"gen{n}-" + body).encode("utf-8", "surrogateescape"))
    return names


def refs_of(repo_dir) -> dict[bytes, bytes]:
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)"],
        cwd=repo_dir,
        capture_output=True,
        check=True,
    ).stdout
    return {ref: sha for sha, ref in (line.split(b" ", 1) for line in out.splitlines())}


def report(stdout: bytes, sent: list[bytes]) -> dict[bytes, bytes] | None:
    """{ref: b"ok" | b"ng REASON"} from a report-status (no side-band), None if absent.
    `ng REF REASON` is ambiguous for a ref with a space (in C git too): the refs sent
    tell where the name ends."""
    data, seen_flush, found = stdout, False, {}
    while len(data) >= 4:
        try:
            length = int(data[:4], 16)
        except ValueError:
            return None
        if length == 0:
            seen_flush, data = True, data[4:]
            continue
        line, data = data[4:length].rstrip(b"\n"), data[length:]
        if seen_flush and line[:3] in (b"ok ", b"ng "):
            rest = line[3:]
            ref = max(
                (r for r in sent if rest == r or rest.startswith(r + b" ")),
                key=len,
                default=rest.partition(b" ")[0],
            )
            found[ref] = b"ok" if line[:2] == b"ok" else b"ng " + rest[len(ref) + 1 :]
        elif seen_flush and line.startswith(b"unpack "):
            found[b"unpack"] = line[7:]
    return found if b"unpack" in found else None


def refs_class(w: World, generated: int) -> Result:
    result = Result("refs (D/F, replace, funny names, namespaces)")
    g = w.g
    path = g.repo(w.ws)
    repo_dir = g.repo_dir(path)
    g.git(
        w.alice,
        "push",
        "-q",
        g.url(path),
        "HEAD:refs/heads/main",
        "HEAD:refs/heads/a",
        "HEAD:refs/heads/x/y",
        "HEAD:refs/heads/packed",
        cwd=w.clone,
    )
    local_git("pack-refs", "--all", cwd=repo_dir)  # these four are packed now
    g.git(w.alice, "push", "-q", g.url(path), "HEAD:refs/heads/loose", cwd=w.clone)
    tip = local_git("rev-parse", "main", cwd=repo_dir).strip().encode()
    parent = local_git("rev-parse", "main~1", cwd=repo_dir).strip().encode()
    # A ref the operator made outside the namespaces: a push may not delete it either.
    local_git("update-ref", "refs/notes/commits", tip.decode(), cwd=repo_dir)
    before = refs_of(repo_dir)

    new = (ZERO.encode(), tip)
    fixed: dict[str, tuple[list[tuple[bytes, bytes, bytes]], bool]] = {
        "a/b under packed a": ([(*new, b"refs/heads/a/b")], False),
        "x over packed x/y": ([(*new, b"refs/heads/x")], False),
        "x/y/z under packed x/y": ([(*new, b"refs/heads/x/y/z")], False),
        "loose/sub under loose": ([(*new, b"refs/heads/loose/sub")], False),
        "n and n/m in one push": ([(*new, b"refs/heads/n"), (*new, b"refs/heads/n/m")], False),
        "n/m and n in one push, atomic": (
            [(*new, b"refs/heads/n/m"), (*new, b"refs/heads/n")],
            True,
        ),
        "atomic: a good branch and a/b": (
            [(*new, b"refs/heads/good"), (*new, b"refs/heads/a/b")],
            True,
        ),
        "atomic: main rewound and x": (
            [(tip, parent, b"refs/heads/main"), (*new, b"refs/heads/x")],
            True,
        ),
        "stale delete of a, then a/b": (
            [(parent, ZERO.encode(), b"refs/heads/a"), (*new, b"refs/heads/a/b")],
            False,
        ),
        "refs/replace/ of the tip": ([(*new, b"refs/replace/" + tip)], False),
        "refs/replace/ of the tip, atomic with a branch": (
            [(*new, b"refs/replace/" + tip), (*new, b"refs/heads/good2")],
            True,
        ),
        "delete of the operator's refs/notes/commits": (
            [(tip, ZERO.encode(), b"refs/notes/commits")],
            False,
        ),
    }
    for ref in [
        b"refs/foo",
        b"refs/heads",
        b"refs/tags",
        b"refs/",
        b"HEAD",
        b"main",
        b"refs/heads/HEAD",
        "refs/heads/evil\u202egpj.exe".encode(),
        "refs/heads/x\u009b31m".encode(),
        "refs/tags/v1\u2066".encode(),
        "refs/heads/a\u200eb".encode(),
        "refs/heads/a\u061cb".encode(),
        b"refs/heads/\xff\xfe",
        b"refs/heads/a..b",
        b"refs/heads/x.lock",
        b"refs/heads/a\x01b",
        b"refs/heads/sp ace",
        b"refs/heads/@{u}",
        b"refs/heads//x",
        b"refs/heads/x/",
        b"refs/heads/.hidden",
        b"refs/notes/commits2",
        b"refs/for/main",
        b"refs/pull/1/head",
        b"refs/remotes/origin/main",
        b"refs/meta/config",
        b"refs/changes/01/1/1",
        b"refs/stash",
        b"refs/headsx/y",
        b"refs/tagsx/v1",
        b"refs/prefetch/remotes/o/main",
    ]:
        fixed[f"name {ref[:60]!r}"] = ([(*new, ref)], False)

    names = generated_names(generated)
    batches = [names[i : i + 10] for i in range(0, len(names), 10)]

    async def push(conn, lines, atomic):
        proc = await asyncio.wait_for(
            run(conn, f"git-receive-pack '{path}'", commands(lines, atomic) + _empty_pack()), 30
        )
        return proc, report(proc.stdout, [ref for _, _, ref in lines])

    async def run_all() -> None:
        async with connect(g, w.alice.key) as conn:
            for what, (lines, atomic) in fixed.items():
                try:
                    proc, verdicts = await push(conn, lines, atomic)
                except (TimeoutError, asyncssh.Error) as exc:
                    result.check(False, f"{what}: {exc!r}")
                    continue
                ok = (
                    verdicts is not None
                    and proc.exit_status == 0
                    and b"Traceback" not in proc.stderr
                    and b"internal error" not in proc.stderr
                    and all(verdicts.get(ref, b"").startswith(b"ng ") for _, _, ref in lines)
                )
                result.check(
                    ok,
                    f"{what}: status {proc.exit_status}, report {verdicts}, {proc.stderr[-200:]!r}",
                )
            for batch in batches:
                lines = [(*new, ref) for ref in batch]
                proc, verdicts = await push(conn, lines, False)
                for ref in batch:
                    want = expected_ok(ref)
                    got = (verdicts or {}).get(ref, b"")
                    ok = proc.exit_status == 0 and (
                        got == b"ok" if want else got.startswith(b"ng ")
                    )
                    result.check(
                        ok, f"generated {ref!r}: expected {'ok' if want else 'ng'}, got {got!r}"
                    )

    asyncio.run(run_all())
    accepted = {ref for ref in names if expected_ok(ref)}

    # The real client: an atomic push with a conflict, and an unusual name.
    atomic = g.git(
        w.alice,
        "push",
        "--atomic",
        g.url(path),
        "HEAD:refs/heads/real-ok",
        "HEAD:refs/heads/a/real",
        cwd=w.clone,
        check=False,
    )
    result.check(
        atomic.returncode != 0
        and "cannot lock ref 'refs/heads/a/real'" in atomic.stderr
        and b"refs/heads/real-ok" not in refs_of(repo_dir),
        f"git push --atomic with a conflict: {atomic.stdout[-300:]} {atomic.stderr[-300:]}",
    )
    bidi = g.git(
        w.alice, "push", g.url(path), "HEAD:refs/heads/real\u202egpj", cwd=w.clone, check=False
    )
    result.check(
        bidi.returncode != 0 and "control or bidirectional" in bidi.stderr,
        f"git push of a bidi name: {bidi.stdout[-300:]} {bidi.stderr[-300:]}",
    )

    after = refs_of(repo_dir)
    moved = {ref for ref in set(before) | set(after) if before.get(ref) != after.get(ref)}
    result.check(
        moved == accepted,
        f"refs moved that should not: {sorted(moved - accepted)[:5]}, "
        f"missing: {sorted(accepted - moved)[:5]}",
    )
    clean = wait_for(lambda: not list((repo_dir / "objects").glob("incoming-*")), 10)
    result.check(
        clean and not list((repo_dir / "refs").rglob("*.lock")), "no quarantine or lock left"
    )
    fsck = subprocess.run(["git", "fsck", "--full"], cwd=repo_dir, capture_output=True)
    result.check(fsck.returncode == 0, f"git fsck --full: {fsck.stderr[-300:]!r}")
    # Still serving: a normal push and the deletion of what the generated names made.
    deletions = [f":{ref.decode()}" for ref in sorted(accepted)]
    final = g.git(
        w.alice,
        "push",
        "-q",
        g.url(path),
        "HEAD:refs/heads/after",
        *deletions,
        cwd=w.clone,
        check=False,
    )
    result.check(
        final.returncode == 0 and b"refs/heads/after" in refs_of(repo_dir),
        f"a normal push afterwards: {final.stderr[-300:]}",
    )
    result.notes = (
        f"{len(fixed)} fixed pushes (D/F with loose and packed refs, --atomic, "
        f"refs/replace/, funny and unusual names, namespaces), {len(names)} generated "
        f"names judged by git check-ref-format ({len(accepted)} allowed), 2 real "
        f"git pushes; then refs, fsck, no leftovers"
    )
    return result


def _empty_pack() -> bytes:
    import hashlib

    body = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00"
    return body + hashlib.sha1(body).digest()
