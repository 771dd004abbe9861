"""Class `trees`: hostile trees, commits, tags and .gitmodules pushed to receive-pack.

Each push brings one hostile object on top of the branch's tip (so that only the fsck
can refuse it): `.git` under every name a file system reads as one, `..`, paths, empty
names, unsorted and duplicate entries, bad and zero-padded modes, a null gitlink,
.gitmodules with option urls, climbing names, `!command` updates and unparseable text
(CVE-2018-11235's shape), commits and tags with broken headers; plus generated variants
(random case, HFS+ ignorable code points, NTFS trailing dots and spaces). Handled
correctly: the unpack status `fsck error in packed object`, the ref `ng ... unpacker
error`, the message id in a `remote:` line; and at the end legitimate pushes still land,
a clone works and is complete, `git fsck --full --strict` of the repository is clean, no
refused object and no quarantine is left, the server still serves.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time

import asyncssh
from dulwich.objects import Blob, Commit, Tag, Tree

from testkit import local_git, wait_for
from testkit.sshclient import connect

from .suite import Result, World, run

SESSIONS = 10  # one after another on a connection (the suite's server allows 10)
HFS_IGNORED = ["\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u206a", "\ufeff"]


def _fixed_names() -> dict[str, list[tuple[bytes, bytes]]]:
    """msg id -> [(mode, name)] entries of a hostile tree (a blob or tree each)."""
    dotgit = [
        b".git",
        b".GIT",
        b".Git",
        b"git~1",
        b"GIT~1",
        b".git.",
        b".git ",
        b".git. . .",
        b".git::$INDEX_ALLOCATION",
        ".g\u200cit".encode(),
        ".\ufeffgit".encode(),
        b"a\\.git",
        b"x\\git~1\\hooks",
    ]
    cases = {f"hasDotgit {n!r}": [(b"40000", n)] for n in dotgit}
    cases.update(
        {
            "hasDotdot": [(b"40000", b"..")],
            "hasDot": [(b"40000", b".")],
            "fullPathname": [(b"100644", b"a/../../x")],
            "emptyName": [(b"100644", b"")],
            "duplicateEntries": [(b"100644", b"a"), (b"100644", b"a")],
            "duplicateEntries file and dir": [
                (b"100644", b"a"),
                (b"100644", b"a.b"),
                (b"40000", b"a"),
            ],
            "treeNotSorted": [(b"100644", b"b"), (b"100644", b"a")],
            "zeroPaddedFilemode": [(b"0100644", b"a")],
            "badFilemode": [(b"100777", b"a")],
            "badFilemode 100664": [(b"100664", b"a")],
            "badFilemode 16 bits": [(b"1100644", b"a")],
            "gitmodulesSymlink": [(b"120000", b".gitmodules")],
            "largePathname": [(b"100644", b"x" * 5000)],
        }
    )
    return cases


GITMODULES = {
    "gitmodulesUrl option": b'[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch /tmp/x\n',
    "gitmodulesUrl quoted option": b'[submodule "x"]\n\tpath = x\n\turl = "-"-upload-pack=x\n',
    "gitmodulesUrl newline": b'[submodule "x"]\n\tpath = x\n\turl = https://h/%0a\n',
    "gitmodulesUrl climbs": b'[submodule "x"]\n\tpath = x\n\turl = ../../../:evil\n',
    "gitmodulesName": b'[submodule "../../modules/evil"]\n\tpath = x\n\turl = ./x\n',
    "gitmodulesName backslash": b'[submodule "..\\\\..\\\\x"]\n\tpath = x\n',
    "gitmodulesPath": b'[submodule "x"]\n\tpath = --x\n\turl = ./x\n',
    "gitmodulesUpdate": b'[submodule "x"]\n\tpath = x\n\tupdate = !id\n',
    "gitmodulesParse": b'[submodule "x"\n\tpath = x\n',
}

COMMITS = {  # {tree} and {parent} are filled in
    "missingAuthor": "tree {tree}\nparent {parent}\ncommitter A <a@b> 1 +0000\n\nm\n",
    "missingCommitter": "tree {tree}\nparent {parent}\nauthor A <a@b> 1 +0000\n\nm\n",
    "multipleAuthors": "tree {tree}\nparent {parent}\nauthor A <a@b> 1 +0000\n"
    "author B <b@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nm\n",
    "badEmail": "tree {tree}\nparent {parent}\nauthor A <a<b> 1 +0000\n"
    "committer A <a@b> 1 +0000\n\nm\n",
    "zeroPaddedDate": "tree {tree}\nparent {parent}\nauthor A <a@b> 01 +0000\n"
    "committer A <a@b> 1 +0000\n\nm\n",
    "badDateOverflow": "tree {tree}\nparent {parent}\nauthor A <a@b> 99999999999999999999 +0000\n"
    "committer A <a@b> 1 +0000\n\nm\n",
    "badTimezone": "tree {tree}\nparent {parent}\nauthor A <a@b> 1 +01000\n"
    "committer A <a@b> 1 +0000\n\nm\n",
    "missingSpaceBeforeEmail": "tree {tree}\nparent {parent}\nauthor A<a@b> 1 +0000\n"
    "committer A <a@b> 1 +0000\n\nm\n",
    "nulInHeader": "tree {tree}\nparent {parent}\nauthor A\x00B <a@b> 1 +0000\n"
    "committer A <a@b> 1 +0000\n\nm\n",
}

TAGS = {
    "missingEmail": "object {parent}\ntype commit\ntag t\ntagger A a@b 1 +0000\n\nm\n",
    "zeroPaddedDate": "object {parent}\ntype commit\ntag t\ntagger A <a@b> 01 +0000\n\nm\n",
}


def _variant(rng: random.Random) -> tuple[str, bytes, bytes]:
    """A generated name C git reads as .git or .gitmodules: (msg id, mode, name)."""
    word = rng.choice(["git", "gitmodules"])
    text = "." + "".join(c.upper() if rng.random() < 0.5 else c for c in word)
    if rng.random() < 0.5:
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(HFS_IGNORED) + text[at:]
        tail = ""
    else:
        tail = "".join(rng.choice(" .") for _ in range(rng.randint(0, 4)))
    name = (text + tail).encode()
    if word == "git":
        return "hasDotgit", b"40000", name
    return "gitmodulesUrl", b"100644", name


def trees(w: World, count: int) -> Result:
    from testkit.receivepack import RawObject, commands, make_commit, pack_of, sideband, tree_bytes

    result = Result("trees (hostile trees, commits, tags, .gitmodules)")
    g = w.g
    path = g.repo(w.ws)
    repo_dir = g.repo_dir(path)
    clone = w.work / "trees-clone"
    g.git(w.alice, "clone", "-q", g.url(path), str(clone))
    (clone / "README.md").write_text("hello\n")
    local_git("add", ".", cwd=clone, env=g.env)
    local_git("commit", "-qm", "first", cwd=clone, env=g.env)
    g.git(w.alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    tip = local_git("rev-parse", "HEAD", cwd=clone).strip()
    tip_tree = local_git("rev-parse", "HEAD^{tree}", cwd=clone).strip()
    rng = random.Random(11235)

    def on_tip(tree: Tree | RawObject, *extra) -> tuple[bytes, list]:
        c = make_commit(tree.id, [tip.encode()])
        return c.id, [c, tree, *extra]

    inputs: list[tuple[str, str, bytes, bytes, list]] = []  # what, msg id, ref, new, objects
    payload = Blob.from_string(b"payload\n")
    sub = Tree()
    sub.add(b"f", 0o100644, payload.id)
    for what, entries in _fixed_names().items():
        raw = tree_bytes(
            *[
                (m, n, bytes.fromhex((sub.id if m == b"40000" else payload.id).decode()))
                for m, n in entries
            ]
        )
        tree = RawObject.of(Tree, raw)
        inputs.append((what, what.split()[0], b"refs/heads/main", *on_tip(tree, sub, payload)))
    names = [
        (".gitmodules", b".gitmodules"),
        (".GITMODULES", b".GITMODULES"),
        ("gitmod~1", b"gitmod~1"),
        ("gi7eba~1", b"gi7eba~1"),
    ]
    for what, content in GITMODULES.items():
        label, name = names[len(inputs) % len(names)]
        blob = Blob.from_string(content)
        tree = RawObject.of(Tree, tree_bytes((b"100644", name, bytes.fromhex(blob.id.decode()))))
        inputs.append(
            (f"{what} as {label}", what.split()[0], b"refs/heads/main", *on_tip(tree, blob))
        )
    for what, text in COMMITS.items():
        c = RawObject.of(Commit, text.format(tree=tip_tree, parent=tip).encode())
        inputs.append((f"commit {what}", what, b"refs/heads/main", c.id, [c]))
    for what, text in TAGS.items():
        t = RawObject.of(Tag, text.format(parent=tip).encode())
        inputs.append((f"tag {what}", what, f"refs/tags/bad-{what}".encode(), t.id, [t]))
    hostile_url = Blob.from_string(GITMODULES["gitmodulesUrl option"])
    while len(inputs) < count:
        msg_id, mode, name = _variant(rng)
        target = sub if mode == b"40000" else hostile_url
        tree = RawObject.of(Tree, tree_bytes((mode, name, bytes.fromhex(target.id.decode()))))
        inputs.append(
            (f"generated {name!r}", msg_id, b"refs/heads/main", *on_tip(tree, target, payload))
        )
    refused_objects = {
        o.id.decode()
        for *_, objects in inputs
        for o in objects
        if o.id not in (sub.id, payload.id, hostile_url.id)
    }
    before = local_git("for-each-ref", cwd=repo_dir)

    async def push(conn, body: bytes):
        proc = await asyncio.wait_for(run(conn, f"git-receive-pack '{path}'", body), 30)
        return proc, *sideband(proc.stdout)

    async def run_all() -> None:
        for first in range(0, len(inputs), SESSIONS):
            async with connect(g, w.alice.key) as conn:
                for what, msg_id, ref, new, objects in inputs[first : first + SESSIONS]:
                    old = tip.encode() if ref == b"refs/heads/main" else b"0" * 40
                    body = commands((old, new, ref), caps=b"report-status side-band-64k")
                    try:
                        proc, report, text = await push(conn, body + pack_of(*objects))
                        ok = (
                            report.get("unpack") == "fsck error in packed object"
                            and report.get(ref.decode()) == "ng unpacker error"
                            and f": {msg_id}: " in text
                            and b"Traceback" not in proc.stderr
                        )
                    except (TimeoutError, asyncssh.Error, ValueError) as exc:
                        ok, report, text = False, {}, repr(exc)
                    result.check(ok, f"{what}: {report} {text[:300]!r}")

    started = time.monotonic()
    asyncio.run(run_all())
    pushed = time.monotonic() - started
    clean = wait_for(lambda: not list((repo_dir / "objects").glob("incoming-*")), 15)
    result.check(clean, "no quarantine left")
    result.check(local_git("for-each-ref", cwd=repo_dir) == before, "no ref changed")
    present = subprocess.run(
        ["git", "cat-file", "--batch-check"],
        cwd=repo_dir,
        capture_output=True,
        input="\n".join(sorted(refused_objects)) + "\n",
        text=True,
    ).stdout
    leaked = [line.split()[0] for line in present.splitlines() if not line.endswith("missing")]
    result.check(not leaked, f"refused objects in the repository: {leaked[:5]}")
    # Legitimate pushes still land: a submodule with a normal .gitmodules, a merge, a tag.
    (clone / ".gitmodules").write_text('[submodule "lib"]\n\tpath = lib\n\turl = ../lib.git\n')
    local_git("add", ".gitmodules", cwd=clone, env=g.env)
    local_git("update-index", "--add", "--cacheinfo", f"160000,{tip},lib", cwd=clone, env=g.env)
    local_git("commit", "-qm", "a submodule", cwd=clone, env=g.env)
    local_git("checkout", "-qb", "side", tip, cwd=clone, env=g.env)
    (clone / ".github").mkdir()
    (clone / ".github" / "ci.yml").write_text("on: push\n")
    local_git("add", ".", cwd=clone, env=g.env)
    local_git("commit", "-qm", "side", cwd=clone, env=g.env)
    local_git("checkout", "-q", "main", cwd=clone, env=g.env)
    local_git("merge", "-q", "--no-edit", "side", cwd=clone, env=g.env)
    local_git("tag", "-a", "-m", "release", "v1", cwd=clone, env=g.env)
    good = g.git(w.alice, "push", "-q", "origin", "main", "side", "v1", cwd=clone, check=False)
    result.check(good.returncode == 0, f"legitimate push refused: {good.stderr[-500:]}")
    again = w.work / "trees-again"
    cloned = g.git(w.alice, "clone", "-q", g.url(path), str(again), check=False)
    result.check(
        cloned.returncode == 0 and (again / ".gitmodules").exists(),
        f"clone after the attacks: {cloned.stderr[-300:]}",
    )
    for where in (repo_dir, again):
        fsck = subprocess.run(["git", "fsck", "--full", "--strict"], cwd=where, capture_output=True)
        result.check(
            fsck.returncode == 0,
            f"git fsck --full --strict in {where.name}: {fsck.stderr[-300:]!r}",
        )
    result.notes = (
        f"{len(inputs)} hostile pushes over asyncssh in {pushed:.0f} s, each refused "
        f"with its message id; then legitimate pushes, a clone, fsck --strict clean"
    )
    return result
