"""Upload-pack in Git protocol v2 (gitprotocol-v2): the capability advertisement, then
commands, several on one connection, as git sends them (`ls-refs`, then `fetch`).

The worker serves this when the client asked for `version=2` (workers/job.py:
git_protocol); the access decision was made before, and again at the client's first
command (commands/git.py). A v2 request reaches what a v0 one does and nothing more:
the same refs (those whose objects are present), wants only of their tips, and the pack
from the same `fetch.send_pack`.

A request is pkt-lines: `command=NAME` and capabilities, a delim-pkt (`0001`), the
command's arguments, a flush-pkt (`0000`). Anything the server does not serve or does
not understand is answered with one `ERR` pkt-line saying what, and the connection
ends there (git's own upload-pack dies the same way); nothing is read further.

Refs come from refs.py (only what `ref-prefix` asks for is read), shallow requests are
planned by shallow.py, `filter` is parsed by filters.py, and a want that is not a ref
tip passes reachable.py, exactly as in v0.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dulwich.pack import write_pack_from_container
from dulwich.repo import Repo

from ... import __version__
from ...names import printable
from . import filters, lsrefscache, reachable, shallow, sideband, storedpacks
from .fetch import Fetch, send_pack
from .filters import FilterError, ObjectFilter
from .objectindex import ObjectIndex
from .reachable import NotReachable
from .refs import Ref, git_dir_of, head_target, list_refs
from .refusal import RequestRefused
from .shallow import Deepen, ShallowError
from .storedpacks import ObjectReader
from .walk import COMMIT, Walk

FLUSH, DELIM = b"0000", b"0001"
LS_REFS_BATCH = 512  # pkt-lines per write: ~40 KB of refs


def _pkt(payload: bytes) -> bytes:
    """One pkt-line: four hex digits of length (its own four included), then the payload."""
    return b"%04x" % (len(payload) + 4) + payload


MAX_PKT = 65520  # git's LARGE_PACKET_MAX
# git's ls-refs keeps at most this many prefixes; beyond, it lists every ref (cheaper
# than matching each against them all). Done the same way here.
TOO_MANY_PREFIXES = 65536
MAX_SERVER_OPTIONS = 100
MAX_SERVER_OPTION_BYTES = 1024
HEX = frozenset(b"0123456789abcdef")
FETCH_FEATURES = (b"shallow", b"wait-for-done", b"filter")  # `fetch=`: what is served


class _Refusal(Exception):
    """Raised while reading a request; `serve` turns it into the ERR line."""


def _shown(value: bytes, limit: int = 80) -> str:
    """The client's bytes, safe to put in a message for a terminal."""
    return printable(value.decode("utf-8", "replace"), limit)


def _oid(value: bytes, what: bytes) -> bytes:
    if len(value) != 40 or not HEX.issuperset(value):
        raise _Refusal(f"{what.decode()}: not an object name: '{_shown(value)}'")
    return value


class _Marker:
    """A flush-pkt or a delim-pkt, as `_Lines.next` returns them."""


FLUSH_PKT, DELIM_PKT = _Marker(), _Marker()


class _Lines:
    """The client's pkt-lines, one at a time."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def next(self) -> bytes | _Marker | None:
        """A payload without its newline, FLUSH_PKT or DELIM_PKT; None at the end."""
        head = self._read(4)
        if not head:
            return None
        if len(head) < 4 or not HEX.issuperset(head.lower()):
            raise _Refusal("protocol error: not a pkt-line")
        length = int(head, 16)
        if length == 0:
            return FLUSH_PKT
        if length == 1:
            return DELIM_PKT
        if length < 4 or length > MAX_PKT:
            raise _Refusal(f"protocol error: bad pkt-line length {head.decode()}")
        payload = self._read(length - 4)
        if len(payload) != length - 4:
            return None  # the client went away mid-line
        return payload[:-1] if payload.endswith(b"\n") else payload


@dataclass
class _Request:
    command: bytes
    # Checked and kept; upload-pack runs no hooks, so nothing reads them yet.
    server_options: list[bytes] = field(default_factory=list)


# The first words of the commands' arguments: sent before the delim-pkt, they are the
# likeliest cause of an "unknown capability", and the message says so.
_ARGUMENT_WORDS = frozenset(
    b"peel symrefs unborn ref-prefix want want-ref have done thin-pack ofs-delta "
    b"include-tag no-progress wait-for-done shallow deepen deepen-since deepen-not "
    b"deepen-relative filter".split()
)


class UploadPackV2:
    def __init__(self, repo: Repo, proto) -> None:
        self.repo = repo
        self.proto = proto
        self.lines = _Lines(proto.read)
        self._listed: list[Ref] | None = None
        self._pending_flush = False  # the request's flush-pkt came before any argument

    # --- the connection ----------------------------------------------------------------

    def handle(self) -> None:
        self._advertise()
        try:
            while (request := self._read_request()) is not None:
                if request.command == b"ls-refs":
                    self._ls_refs()
                else:
                    self._fetch()
        except _Refusal as refusal:
            message = str(refusal)
            self.proto.write_pkt_line(f"ERR {message}\n".encode())
            raise RequestRefused(message) from None

    def _advertise(self) -> None:
        fetch = b"fetch=" + b" ".join(FETCH_FEATURES) if FETCH_FEATURES else b"fetch"
        for line in (
            b"version 2",
            b"agent=gateway/" + __version__.encode(),
            b"ls-refs=unborn",
            fetch,
            b"server-option",
            b"object-format=" + self._object_format(),
        ):
            self.proto.write_pkt_line(line + b"\n")
        self.proto.write(FLUSH)

    def _object_format(self) -> bytes:
        return getattr(self.repo.object_format, "name", "sha1").encode()

    def _read_request(self) -> _Request | None:
        """The command and capabilities up to the delim-pkt (or a flush-pkt: a command
        without arguments). None when the client is done: the end of the stream, or an
        empty request (a flush-pkt alone)."""
        request: _Request | None = None
        options: list[bytes] = []
        seen_any = False
        while True:
            line = self.lines.next()
            if line is None:
                return None
            if line is FLUSH_PKT:
                if not seen_any:
                    return None
                if request is None:
                    raise _Refusal("no command requested")
                self._pending_flush = True  # the arguments' end, already read
                request.server_options = options
                return request
            if line is DELIM_PKT:
                if request is None:
                    raise _Refusal("no command requested")
                self._pending_flush = False
                request.server_options = options
                return request
            seen_any = True
            assert isinstance(line, bytes)
            key, _, value = line.partition(b"=")
            if key == b"command":
                if request is not None:
                    raise _Refusal(
                        f"command '{_shown(value)}' requested after already requesting "
                        f"command '{_shown(request.command)}'"
                    )
                if value not in (b"ls-refs", b"fetch"):
                    raise _Refusal(f"invalid command '{_shown(value)}'")
                request = _Request(value)
            elif key == b"agent" and value:
                pass  # any agent is served alike
            elif key == b"object-format" and value:
                if value != self._object_format():
                    raise _Refusal(
                        f"mismatched object format: the client asks for '{_shown(value)}', "
                        f"the repository is {self._object_format().decode()}"
                    )
            elif key == b"server-option" and b"=" in line:
                options.append(_server_option(value, len(options)))
            else:
                hint = (
                    " (a command's arguments come after a 0001 delimiter)"
                    if line.split(b" ", 1)[0] in _ARGUMENT_WORDS
                    else ""
                )
                raise _Refusal(f"unknown capability '{_shown(line)}'{hint}")

    def _arguments(self) -> Iterator[bytes]:
        """The command's arguments up to its flush-pkt."""
        if self._pending_flush:
            return
        while True:
            line = self.lines.next()
            if line is None:
                raise _Refusal("the request ended before its flush-pkt")
            if line is FLUSH_PKT:
                return
            if line is DELIM_PKT:
                raise _Refusal("unexpected delimiter (0001) among the arguments")
            assert isinstance(line, bytes)
            yield line

    # --- refs ----------------------------------------------------------------------------

    def listed(self) -> list[Ref]:
        """Every ref whose object is present, HEAD included: what v0 advertises too."""
        if self._listed is None:
            self._listed = list_refs(self.repo.controldir(), store=self.repo.object_store)
        return self._listed

    def refs(self) -> dict[bytes, bytes]:
        return {ref.name: ref.sha for ref in self.listed()}

    def _list_refs(self, prefixes: list[bytes]) -> list[Ref]:
        """The refs ls-refs lists, HEAD first as git does, an unborn HEAD as a Ref with
        no object; only the refs under `prefixes` are read (an up-to-date fetch asks for
        a few of many)."""
        store = self.repo.object_store
        listed = list_refs(self.repo.controldir(), prefixes, store=store)
        head = [ref for ref in listed if ref.name == b"HEAD"]
        rest = [ref for ref in listed if ref.name != b"HEAD"]
        if not head and (not prefixes or any(b"HEAD".startswith(p) for p in prefixes)):
            target = head_target(self.repo.controldir())
            if target is not None:
                head = [Ref(b"HEAD", b"", None, target)]  # unborn
        return head + rest

    def _ls_refs(self) -> None:
        symrefs = peel = unborn = False
        prefixes: list[bytes] = []
        too_many = False
        for arg in self._arguments():
            if arg == b"symrefs":
                symrefs = True
            elif arg == b"peel":
                peel = True
            elif arg == b"unborn":
                unborn = True
            elif arg.startswith(b"ref-prefix "):
                if not too_many:
                    prefixes.append(arg[len(b"ref-prefix ") :])
                    too_many = len(prefixes) >= TOO_MANY_PREFIXES
            else:
                raise _Refusal(f"ls-refs: unexpected argument '{_shown(arg)}'")
        if too_many:
            prefixes = []  # as git: all refs rather than so many prefixes
        # The answer is kept until a ref changes (lsrefscache.py).
        git_dir = git_dir_of(self.repo.controldir())
        flags = b"symrefs=%d peel=%d unborn=%d %s" % (
            symrefs,
            peel,
            unborn,
            b" ".join(_pkt(p) for p in prefixes),  # framed: any byte may be in a prefix
        )
        kept_in = lsrefscache.file_for(prefixes)
        cache_key = lsrefscache.key(git_dir, flags, prefixes)
        if (kept := lsrefscache.load(git_dir, kept_in, cache_key)) is not None:
            self.proto.write(kept + FLUSH)
            return
        # Framed here and written in large pieces: one write (and one log call) per ref
        # was most of the CPU of listing 20,000 refs.
        out: list[bytes] = []
        answer: list[bytes] = []  # everything written, for the cache
        for ref in self._list_refs(prefixes):
            if not ref.sha:
                if unborn:
                    target = b" symref-target:" + ref.symref_target if symrefs else b""
                    out.append(_pkt(b"unborn HEAD" + (target or b"") + b"\n"))
                continue
            line = ref.sha + b" " + ref.name
            if symrefs and ref.symref_target:
                line += b" symref-target:" + ref.symref_target
            if peel and ref.peeled:
                line += b" peeled:" + ref.peeled
            out.append(_pkt(line + b"\n"))
            if len(out) >= LS_REFS_BATCH:
                answer.append(b"".join(out))
                self.proto.write(answer[-1])
                out.clear()
        answer.append(b"".join(out))
        self.proto.write(answer[-1] + FLUSH)
        if lsrefscache.key(git_dir, flags, prefixes) == cache_key:
            lsrefscache.save(git_dir, kept_in, cache_key, b"".join(answer))

    # --- fetch ---------------------------------------------------------------------------

    def _present(self, haves: list[bytes]) -> list[bytes]:
        """The client's haves this repository has, in their order. From the pack indexes'
        bytes (objectindex.py): dulwich's `sha in store` loads every pack's index first,
        a few milliseconds a pack on every fetch of a repository pushes keep adding to."""
        objects_dir = os.path.join(self.repo.controldir(), "objects")
        objects = ObjectIndex(objects_dir, self.repo.object_store)
        try:
            present = objects.present(set(haves))
        finally:
            objects.close()
        return [sha for sha in dict.fromkeys(haves) if sha in present]

    def _fetch(self) -> None:
        args = _FetchArguments()
        try:
            for arg in self._arguments():
                _fetch_argument(args, arg)
        except (FilterError, ShallowError) as exc:
            raise _Refusal(f"fetch: {exc}") from None
        refs = self.refs()
        for name in args.want_refs:
            if name not in refs:
                raise _Refusal(f"unknown ref {_shown(name)}")
            args.wants.append(refs[name])
        if not args.wants:
            raise _Refusal("fetch: no want or want-ref lines")
        args.wants = list(dict.fromkeys(args.wants))
        common = self._present(args.haves)
        reader = storedpacks.reader_for(self.repo)
        try:
            self._check_wants(reader, refs, args.wants)
            if not args.done:
                ready = (
                    not args.wait_for_done
                    and bool(common)
                    and reader is not None
                    and _all_wants_reach(reader, args.wants, common)
                )
                self._acknowledgments(common, ready)
                if not ready:
                    self.proto.write(FLUSH)
                    return  # another round: the client sends its next haves
                self.proto.write(DELIM)
            plan = None
            if args.deepen is not None or args.client_shallow:
                # git sends the section whenever the client is shallow or deepens.
                if reader is None:
                    raise _Refusal("shallow fetches are served from SHA-1 repositories only")
                try:
                    plan = shallow.plan(reader, refs, args.wants, args.client_shallow, args.deepen)
                except ShallowError as exc:
                    raise _Refusal(f"fetch: {exc}") from None
                self.proto.write_pkt_line(b"shallow-info\n")
                if plan.deepened:
                    for sha in plan.shallow:
                        self.proto.write_pkt_line(b"shallow " + sha + b"\n")
                    for sha in plan.unshallow:
                        self.proto.write_pkt_line(b"unshallow " + sha + b"\n")
                self.proto.write(DELIM)
            if args.want_refs:
                self.proto.write_pkt_line(b"wanted-refs\n")
                for name in dict.fromkeys(args.want_refs):
                    self.proto.write_pkt_line(refs[name] + b" " + name + b"\n")
                self.proto.write(DELIM)
            request = Fetch(
                wants=args.wants,
                haves=common,
                tagged=self._tagged() if args.include_tag else {},
                ofs_delta=args.ofs_delta,
                thin_pack=args.thin_pack,
                client_shallow=frozenset(args.client_shallow),
                object_filter=args.object_filter,
                deepen=args.deepen,
                shallow_plan=plan,
            )
            self._packfile(reader, refs, request, args.no_progress)
        finally:
            if reader is not None:
                reader.close()

    def _check_wants(
        self, reader: ObjectReader | None, refs: dict[bytes, bytes], wants: list[bytes]
    ) -> None:
        """Only what a ref reaches (reachable.py), as in v0."""
        try:
            if reader is not None:
                reachable.check_wants(self.repo.path, reader, refs, wants)
                return
            tips = set(refs.values())
            for sha in wants:
                if sha not in tips:
                    raise NotReachable(sha)
        except NotReachable as exc:
            raise _Refusal(str(exc)) from None

    def _acknowledgments(self, common: list[bytes], ready: bool) -> None:
        write = self.proto.write_pkt_line
        write(b"acknowledgments\n")
        for sha in common:
            write(b"ACK " + sha + b"\n")
        if not common:
            write(b"NAK\n")
        if ready:
            write(b"ready\n")

    def _packfile(
        self,
        reader: ObjectReader | None,
        refs: dict[bytes, bytes],
        request: Fetch,
        no_progress: bool,
    ) -> None:
        self.proto.write_pkt_line(b"packfile\n")
        data = sideband.writer(self.proto.write)
        progress = (
            (lambda _message: None)
            if no_progress
            else sideband.writer(self.proto.write, sideband.PROGRESS)
        )
        if reader is None:
            self._pack_with_dulwich(request, data, progress)
        else:
            send_pack(self.repo.path, reader, refs, request, data, progress)
        self.proto.write(FLUSH)

    def _tagged(self) -> dict[bytes, bytes]:
        """Peeled object -> annotated tag, for include-tag (from the listed refs)."""
        return {ref.peeled: ref.sha for ref in self.listed() if ref.peeled is not None}

    def _pack_with_dulwich(
        self, request: Fetch, write: Callable[[bytes], None], progress: Callable[[bytes], object]
    ) -> None:
        # Repositories whose packs storedpacks cannot read (as v0's upload_pack.py does).
        store = self.repo.object_store
        missing = store.find_missing_objects(
            request.haves,
            request.wants,
            shallow=set(request.client_shallow),
            get_tagged=lambda: request.tagged,
        )
        object_ids = list(missing)
        progress(f"counting objects: {len(object_ids)}, done.\n".encode("ascii"))
        write_pack_from_container(
            write,
            store,
            object_ids,
            object_format=self.repo.object_format,
            reuse_deltas=request.thin_pack and request.ofs_delta,
        )


@dataclass
class _FetchArguments:
    wants: list[bytes] = field(default_factory=list)
    want_refs: list[bytes] = field(default_factory=list)
    haves: list[bytes] = field(default_factory=list)
    client_shallow: list[bytes] = field(default_factory=list)
    done: bool = False
    thin_pack: bool = False
    ofs_delta: bool = False
    include_tag: bool = False
    no_progress: bool = False
    wait_for_done: bool = False
    depth: int = 0  # `deepen N`; 0: not asked
    since: int | None = None  # `deepen-since T`
    not_refs: list[bytes] = field(default_factory=list)  # `deepen-not REF`
    relative: bool = False  # `deepen-relative`
    object_filter: ObjectFilter | None = None

    @property
    def deepen(self) -> Deepen | None:
        if not (self.depth or self.since is not None or self.not_refs):
            return None
        return Deepen(self.depth, self.since, tuple(self.not_refs), self.relative)


_FLAGS = {
    b"done": "done",
    b"thin-pack": "thin_pack",
    b"ofs-delta": "ofs_delta",
    b"include-tag": "include_tag",
    b"no-progress": "no_progress",
    b"wait-for-done": "wait_for_done",
    b"deepen-relative": "relative",
}


def _fetch_argument(args: _FetchArguments, arg: bytes) -> None:
    """One argument of `fetch` into `args`, or a _Refusal naming it."""
    flag = _FLAGS.get(arg)
    if flag is not None:
        setattr(args, flag, True)
        return
    word, _, value = arg.partition(b" ")
    if word == b"want":
        args.wants.append(_oid(value, word))
    elif word == b"have":
        args.haves.append(_oid(value, word))
    elif word == b"want-ref" and value:
        args.want_refs.append(value)
    elif word == b"shallow":
        # The client's shallow commits bound the walk (fetch.Fetch.client_shallow).
        args.client_shallow.append(_oid(value, word))
    elif word == b"deepen":
        args.depth = shallow.parse_depth(value)
    elif word == b"deepen-since":
        args.since = shallow.parse_since(value)
    elif word == b"deepen-not" and value:
        args.not_refs.append(value)
    elif word == b"filter":
        if args.object_filter is not None:
            raise FilterError("more than one filter line")
        args.object_filter = filters.parse(value)
    else:
        raise _Refusal(f"fetch: unexpected argument '{_shown(arg)}'")


def _server_option(value: bytes, before: int) -> bytes:
    """A server option, checked: git's client sends one line of text per option."""
    if len(value) > MAX_SERVER_OPTION_BYTES or b"\0" in value:
        raise _Refusal("server-option: too long, or holds a NUL byte")
    if before >= MAX_SERVER_OPTIONS:
        raise _Refusal(f"server-option: more than {MAX_SERVER_OPTIONS} options")
    return value


def _all_wants_reach(reader: ObjectReader, wants: list[bytes], common: list[bytes]) -> bool:
    """Whether every wanted commit reaches a commit the client has: then the server has
    found enough to send a pack (`ready`), as git's ok_to_give_up(). Commits older than
    the oldest common one are not walked: nothing below them is common."""
    walk = Walk(reader)
    try:
        have_commits = set()
        for sha in common:
            type_num, peeled = walk.peel(sha)
            if type_num == COMMIT:
                have_commits.add(peeled)
        if not have_commits:
            return False
        oldest = min(walk.commit(sha)[2] for sha in have_commits)
        for want in wants:
            type_num, peeled = walk.peel(want)
            if type_num != COMMIT or not _reaches(walk, peeled, have_commits, oldest):
                return False
    except (KeyError, storedpacks.PackError):
        return False  # no opinion: the client will say `done`
    return True


def _reaches(walk: Walk, start: bytes, targets: set[bytes], oldest: int) -> bool:
    queue = [(-walk.commit(start)[2], start)]
    seen = {start}
    while queue:
        negative_time, sha = heapq.heappop(queue)
        if sha in targets:
            return True
        if -negative_time < oldest:
            continue
        for parent in walk.commit(sha)[1]:
            if parent not in seen:
                seen.add(parent)
                heapq.heappush(queue, (-walk.commit(parent)[2], parent))
    return False
