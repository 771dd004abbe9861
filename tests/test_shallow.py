"""Shallow clones, fetches and pushes (gateway/git/upload/shallow.py, receive/pipeline.py):
real git against a real gateway, each result held against C git serving the same request
from a local copy of the same repository (`git clone --depth ... file://`).

Each request runs under every protocol version in PROTOCOLS (forced with
`git -c protocol.version=N`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testkit import Gateway, local_git, pkt
from testkit.pktline import parse_pkts

PROTOCOLS = ["0", "2"]
DAY = 86400
START = 1_700_000_000  # the first commit's date; each one after it a day later


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


class History:
    """A work tree whose commits have fixed dates, so that `--shallow-since` means the
    same on every run."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.count = 0
        local_git("init", "-q", "-b", "main", str(tree), cwd=tree.parent)

    def git(self, *args: str) -> str:
        when = f"{START + self.count * DAY} +0000"
        env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        return local_git(*args, cwd=self.tree, env=env)

    def commit(self, name: str, content: str | None = None) -> str:
        self.count += 1
        path = self.tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if content is not None else f"{name} {self.count}\n")
        self.git("add", name)
        self.git("commit", "-q", "-m", f"{name} {self.count}")
        return self.git("rev-parse", "HEAD").strip()

    def merge(self, branch: str) -> str:
        self.count += 1
        self.git("merge", "-q", "--no-ff", "-m", f"merge {branch}", branch)
        return self.git("rev-parse", "HEAD").strip()

    def date(self, n: int) -> str:
        """The date of the n-th commit, as `--shallow-since` takes it."""
        return f"@{START + n * DAY}"


def build_history(tree: Path) -> History:
    """main: 1, 2; a branch `feature` from 2 (3, 4); main again: 5, 6 (annotated tag v1),
    7, the merge of feature (8), 9 (lightweight tag v2), 10. Dated in that order."""
    h = History(tree)
    h.commit("docs/m0.txt")
    h.commit("docs/m1.txt")
    h.git("checkout", "-q", "-b", "feature")
    h.commit("feature/a.txt")
    h.commit("feature/b.txt")
    h.git("checkout", "-q", "main")
    h.commit("src/m2.txt")
    h.commit("src/m3.txt")
    h.git("tag", "-a", "-m", "release 1", "v1")
    h.commit("src/m4.txt")
    h.merge("feature")
    h.commit("src/m5.txt")
    h.git("tag", "v2")
    h.commit("docs/m6.txt")
    return h


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result


def state(clone: Path) -> dict[str, object]:
    """What a user compares between two shallow clones: fsck clean, the shallow file,
    the commit count, the refs, and every object the refs reach."""
    fsck = run(clone, "fsck", "--full", "--strict", "--no-dangling", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    shallow_file = clone / ".git" / "shallow"
    if not shallow_file.exists():
        shallow_file = clone / "shallow"  # a bare clone
    return {
        "shallow": sorted(shallow_file.read_text().split()) if shallow_file.exists() else [],
        "count": run(clone, "rev-list", "--count", "HEAD").stdout.strip(),
        "refs": run(clone, "for-each-ref", "--format=%(objectname) %(refname)").stdout,
        "objects": sorted(run(clone, "rev-list", "--objects", "--all").stdout.split("\n")),
    }


class Pair:
    """The same requests made of the gateway and of C git serving a mirror of the same
    repository; `same()` checks the two clones agree."""

    def __init__(self, gw: Gateway, user, path: str, work: Path, protocol: str) -> None:
        self.gw, self.user, self.path, self.work, self.protocol = gw, user, path, work, protocol
        self.mirror = work / "mirror.git"
        if not self.mirror.exists():
            gw.git(user, "clone", "-q", "--mirror", gw.url(path), str(self.mirror))
        self.ours = work / "ours"
        self.theirs = work / "theirs"

    def refresh(self) -> None:
        """The mirror follows the gateway (after a push)."""
        self.gw.git(self.user, "fetch", "-q", "--prune", "origin", cwd=self.mirror)

    def git(self, *args: str) -> tuple[str, str]:
        """Run `git ARGS` against both (the URL goes where {url} is; {clone} is each side's
        clone): the gateway's stderr and C git's."""
        out = []
        for clone, url in (
            (self.ours, self.gw.url(self.path)),
            (self.theirs, f"file://{self.mirror}"),
        ):
            argv = [a.replace("{url}", url).replace("{clone}", str(clone)) for a in args]
            cwd = clone if clone.exists() else self.work
            if clone is self.ours:
                result = self.gw.git(
                    self.user, "-c", f"protocol.version={self.protocol}", *argv, cwd=cwd
                )
                out.append(result.stderr)
            else:
                full = ["-c", f"protocol.version={self.protocol}", *argv]
                out.append(run(cwd, *full).stderr)
        return out[0], out[1]

    def same(self) -> dict[str, object]:
        ours, theirs = state(self.ours), state(self.theirs)
        assert ours == theirs
        return ours


@pytest.fixture
def served(gw: Gateway, work: Path):
    """A gateway repository holding build_history's refs: (user, path, history)."""
    alice = gw.user()
    path = gw.repo(gw.workspace((alice, "write")))
    h = build_history(work / "tree")
    gw.git(alice, "push", "-q", gw.url(path), "main", "feature", "v1", "v2", cwd=h.tree)
    return alice, path, h


@pytest.fixture
def pair(gw, served, work, protocol) -> Pair:
    alice, path, _ = served
    return Pair(gw, alice, path, work, protocol)


@pytest.mark.parametrize("depth", ["1", "3", "4", "6"])
def test_clone_depth_as_c_git(pair, depth):
    # 3 ends on the merge's parents, 4 crosses into both sides of it, 6 reaches the root
    # on one side only.
    pair.git("clone", "-q", "--no-single-branch", "--depth", depth, "{url}", "{clone}")
    got = pair.same()
    assert got["shallow"] or depth == "6"


def test_clone_depth_1_of_a_branch_and_tags(pair):
    pair.git("clone", "-q", "--depth", "1", "--branch", "feature", "{url}", "{clone}")
    assert pair.same()["count"] == "1"


def test_shallow_since_as_c_git(pair, served):
    _, _, h = served
    pair.git(
        "clone", "-q", "--no-single-branch", f"--shallow-since={h.date(5)}", "{url}", "{clone}"
    )
    got = pair.same()
    assert got["shallow"] and got["count"] not in ("1", "10")


@pytest.mark.parametrize("exclude", ["v1", "feature", "refs/tags/v1"])
def test_shallow_exclude_as_c_git(pair, exclude):
    pair.git("clone", "-q", f"--shallow-exclude={exclude}", "{url}", "{clone}")
    assert pair.same()["shallow"]


def test_shallow_exclude_and_since_together(pair, served):
    _, _, h = served
    pair.git(
        "clone", "-q", f"--shallow-since={h.date(3)}", "--shallow-exclude=feature",
        "{url}", "{clone}",
    )  # fmt: skip
    assert pair.same()["shallow"]


def test_deepen_then_unshallow_as_c_git(pair):
    pair.git("clone", "-q", "--depth", "1", "{url}", "{clone}")
    pair.same()
    for deepen in ("1", "2", "3"):
        pair.git("-C", "{clone}", "fetch", "-q", f"--deepen={deepen}")
        pair.same()
    pair.git("-C", "{clone}", "fetch", "-q", "--unshallow")
    got = pair.same()
    assert got["shallow"] == [] and got["count"] == "10"


def test_fetch_depth_after_a_push_into_the_shallow_clone(gw, pair, served):
    alice, path, h = served
    pair.git("clone", "-q", "--depth", "2", "{url}", "{clone}")
    pair.same()
    # A new commit reaches the server, then each shallow clone fetches it at depth 1.
    h.commit("src/m7.txt", "new\n")
    gw.git(alice, "push", "-q", gw.url(path), "main", cwd=h.tree)
    pair.refresh()
    pair.git("-C", "{clone}", "fetch", "-q", "--depth", "1", "origin", "main")
    pair.same()
    # And a plain fetch into the shallow clone (no deepening: the client's shallow lines).
    h.commit("src/m8.txt", "newer\n")
    gw.git(alice, "push", "-q", gw.url(path), "main", cwd=h.tree)
    pair.refresh()
    pair.git("-C", "{clone}", "fetch", "-q", "origin")
    got = pair.same()
    assert (
        local_git("rev-parse", "origin/main", cwd=pair.ours).strip()
        == h.git("rev-parse", "HEAD").strip()
    )
    assert got["shallow"]


def test_a_deleted_branch_is_never_sent(gw, served, work, protocol):
    alice, path, h = served
    h.git("checkout", "-q", "-b", "secret", "main~2")
    hidden = [h.commit("secret.txt", f"secret {i}\n") for i in range(3)]
    hidden_blob = h.git("rev-parse", "HEAD~1:secret.txt").strip()  # not in the tip's tree
    gw.git(alice, "push", "-q", gw.url(path), "secret", cwd=h.tree)
    clone = work / "clone"
    gw.git(
        alice, "-c", f"protocol.version={protocol}", "clone", "-q", "--depth", "1",
        "--no-single-branch", gw.url(path), str(clone),
    )  # fmt: skip
    assert hidden[-1] in (clone / ".git" / "shallow").read_text()
    gw.git(alice, "push", "-q", gw.url(path), "--delete", "secret", cwd=h.tree)
    # The clone still names the secret tip as shallow: deepening must not follow it.
    for args in (["--deepen=2"], ["--unshallow"], ["--depth", "5"]):
        gw.git(alice, "-c", f"protocol.version={protocol}", "fetch", "-q", *args, cwd=clone)
        for sha in [*hidden[:-1], hidden_blob]:
            assert run(clone, "cat-file", "-e", sha, check=False).returncode != 0
    fresh = work / "fresh"
    gw.git(alice, "clone", "-q", "--depth", "3", "--no-single-branch", gw.url(path), str(fresh))
    for sha in [*hidden, hidden_blob]:
        assert run(fresh, "cat-file", "-e", sha, check=False).returncode != 0


# --- pushes from a shallow clone ------------------------------------------------------------


def test_push_from_a_shallow_clone(gw, served, work, protocol):
    # What CI does: tag the commit it built, commit a changelog, push both.
    alice, path, h = served
    clone = work / "ci"
    gw.git(alice, "-c", f"protocol.version={protocol}", "clone", "-q", "--depth", "1",
           gw.url(path), str(clone))  # fmt: skip
    for key, value in (("user.name", "CI"), ("user.email", "ci@example.com")):
        local_git("config", key, value, cwd=clone)
    local_git("tag", "-a", "-m", "release 3", "v3", cwd=clone)
    (clone / "CHANGELOG").write_text("v3\n")
    local_git("add", "CHANGELOG", cwd=clone)
    local_git("commit", "-q", "-m", "changelog", cwd=clone)
    out = gw.git(alice, "push", "origin", "main", "v3", cwd=clone)
    assert "[new tag]" in out.stderr
    server = gw.repo_dir(path)
    assert (
        run(server, "rev-parse", "main").stdout.strip()
        == local_git("rev-parse", "HEAD", cwd=clone).strip()
    )
    assert run(server, "fsck", "--full", "--strict").returncode == 0
    assert not (server / "shallow").exists()
    # The next CI step fetches at depth 1 into the same clone.
    gw.git(alice, "-c", f"protocol.version={protocol}", "fetch", "-q", "--depth", "1",
           "origin", cwd=clone)  # fmt: skip
    assert state(clone)["count"] == "1"  # as C git: the fetched tip is the new boundary


def test_a_push_that_would_make_the_server_shallow_is_refused(gw, served, work):
    # A shallow clone of another repository pushed into an empty one: its history stops
    # at a commit whose parents the server has never had.
    alice, path, _ = served
    other = gw.repo(gw.workspace((alice, "write")))
    clone = work / "shallow"
    gw.git(alice, "clone", "-q", "--depth", "2", gw.url(path), str(clone))
    out = gw.git(alice, "push", gw.url(other), "main", cwd=clone, check=False)
    assert out.returncode != 0
    assert "shallow update not allowed" in out.stderr
    assert "Traceback" not in out.stderr
    assert run(gw.repo_dir(other), "for-each-ref").stdout == ""
    assert not (gw.repo_dir(other) / "shallow").exists()


# --- bad input, by hand -------------------------------------------------------------------


def upload_pack(gw: Gateway, user, path: str, lines: list[bytes]) -> tuple[list, str]:
    """A v0 request made by hand: the first advertised ref wanted, then LINES, a flush
    and `done`. The server's pkt-lines after the advertisement, and its stderr."""
    repo = gw.repo_dir(path)
    tip = run(repo, "rev-parse", "main").stdout.strip().encode()
    request = pkt(b"want " + tip + b" side-band-64k ofs-delta\n")
    request += b"".join(pkt(line + b"\n") for line in lines) + b"0000" + pkt(b"done\n")
    result = subprocess.run(
        [*gw.ssh_command(user.key), "-p", str(gw.port), "git@127.0.0.1",
         f"git-upload-pack '{path}.git'"],
        input=request, capture_output=True, env=gw.env, timeout=60,
    )  # fmt: skip
    pkts, _ = parse_pkts(result.stdout)
    after = pkts[pkts.index(None) + 1 :] if None in pkts else []
    return after, result.stderr.decode(errors="replace")


@pytest.mark.parametrize(
    "lines, message",
    [
        ([b"deepen 0"], "invalid deepen: 0"),
        ([b"deepen -1"], "invalid deepen: -1"),
        ([b"deepen 99999999999"], "invalid deepen: 99999999999"),
        ([b"deepen abc"], "invalid deepen: abc"),
        ([b"deepen-since 4102444800"], "no commits selected for shallow requests"),
        ([b"deepen-since yesterday"], "invalid deepen-since: yesterday"),
        ([b"deepen-not nosuchbranch"], "deepen-not: no such ref: nosuchbranch"),
        ([b"deepen 1", b"deepen-not main"], "cannot be used together"),
        ([b"shallow " + b"x" * 40], "invalid shallow line"),
    ],
)
def test_bad_shallow_requests_get_one_line(gw, served, lines, message):
    alice, path, _ = served
    after, stderr = upload_pack(gw, alice, path, lines)
    assert stderr.count("ERROR:") == 1 and message in stderr, stderr
    assert "Traceback" not in stderr
    assert not any(p and p.startswith(b"\x01PACK") for p in after)
    # The server goes on serving.
    assert upload_pack(gw, alice, path, [b"deepen 1"])[0][0].startswith(b"shallow ")


def test_shallow_lines_naming_a_blob_or_an_unknown_commit(gw, served):
    alice, path, _ = served
    repo = gw.repo_dir(path)
    blob = run(repo, "rev-parse", "main:docs/m6.txt").stdout.strip().encode()
    _, stderr = upload_pack(gw, alice, path, [b"shallow " + blob, b"deepen 1"])
    assert stderr.count("ERROR:") == 1 and f"invalid shallow object {blob.decode()}" in stderr
    # An unknown commit is left out, as C git does (the client's branch may have been
    # rewritten since): the request is served.
    after, stderr = upload_pack(gw, alice, path, [b"shallow " + b"1" * 40, b"deepen 1"])
    assert "ERROR" not in stderr
    assert after[0].startswith(b"shallow ") and after[1] is None


# --- the plan beside C git's upload-pack, request by request ---------------------------------


def merge_heavy_repo(where: Path, commits: int = 80, seed: int = 7) -> Path:
    """A bare repository whose history merges often (up to three parents), two branches
    and a tag, written with fast-import: the same bytes on every run."""
    import random

    rng = random.Random(seed)
    lines = []
    for n in range(1, commits + 1):
        lines += [f"commit refs/heads/{'side' if n % 7 == 3 else 'main'}", f"mark :{n}"]
        lines += [f"committer A <a@example.com> {START + n * DAY} +0000", "data 2", f"{n % 10}x"]
        if n > 1:
            picks = {rng.randrange(max(1, n - 6), n) for _ in range(rng.choice([1, 1, 2, 3]))}
            parents = sorted(picks)
            lines.append(f"from :{parents[-1]}")
            lines += [f"merge :{p}" for p in parents[:-1]]
        lines += [f"M 100644 inline f{n % 5}", "data 4", f"{n:03d}\n"[:4]]
    lines += ["reset refs/tags/t1", f"from :{commits // 2}", ""]
    repo = where / "merges.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=repo, input="\n".join(lines).encode(), check=True
    )
    return repo


def shallow_answer(argv: list[str], repo: Path, request: bytes) -> list[bytes]:
    out = subprocess.run([*argv, str(repo)], input=request, capture_output=True, timeout=60)
    pkts, _ = parse_pkts(out.stdout)
    after = pkts[pkts.index(None) + 1 :]
    lines = after[: after.index(None)] if None in after else after
    assert all(line.startswith((b"shallow ", b"unshallow ")) for line in lines), out.stderr
    return sorted(lines)


def test_plans_match_c_git_on_a_merge_heavy_history(work):
    import sys

    repo = merge_heavy_repo(work)
    rev = lambda name: run(repo, "rev-parse", name).stdout.strip().encode()  # noqa: E731
    main, side = rev("main"), rev("side")
    boundary = [rev("main~3"), rev("side~2")]
    requests = [[b"deepen %d" % d] for d in (1, 2, 3, 5, 8, 13)]
    requests += [[b"deepen-since %d" % (START + n * DAY)] for n in (40, 66, 77)]
    requests += [[b"deepen-not t1"], [b"deepen-not side", b"deepen-since %d" % (START + 30 * DAY)]]
    requests += [[b"shallow " + s for s in boundary] + [b"deepen %d" % d] for d in (1, 4, 9)]
    requests += [[b"shallow " + s for s in boundary] + [b"deepen 2147483647"]]
    ours = [sys.executable, "-m", "gateway.git.workers.worker", "git-upload-pack"]
    answered = 0
    for caps in (b"", b" deepen-relative"):
        for lines in requests:
            request = pkt(b"want " + main + b" ofs-delta" + caps + b"\n")
            request += pkt(b"want " + side + b"\n")
            request += b"".join(pkt(line + b"\n") for line in lines) + b"0000" + pkt(b"done\n")
            theirs = shallow_answer(["git", "upload-pack"], repo, request)
            assert shallow_answer(ours, repo, request) == theirs, (caps, lines)
            answered += bool(theirs)
    assert answered > len(requests)  # most requests move the boundary
