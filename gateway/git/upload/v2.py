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

Shallow fetches by depth (`deepen N`, `shallow`) are served as v0 serves them today,
through dulwich (`_deepen_with_dulwich`), until upload/shallow.py replaces that. Not
served yet (other modules are being written for them; until they are, a request for
them gets an ERR and they are not advertised): `deepen-since`, `deepen-not`,
`deepen-relative` (upload/shallow.py) and `filter` (upload/filters.py).
`_fetch_argument` is where they plug in.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dulwich.object_store import MissingObjectFinder, find_shallow
from dulwich.pack import write_pack_from_container
from dulwich.repo import ParentsProvider, Repo

from ... import __version__
from ...names import printable
from . import sideband, storedpacks
from .fetch import Fetch, send_pack
from .storedpacks import ObjectReader
from .walk import COMMIT, Walk

FLUSH, DELIM = b"0000", b"0001"
MAX_PKT = 65520  # git's LARGE_PACKET_MAX
# git's ls-refs keeps at most this many prefixes; beyond, it lists every ref (cheaper
# than matching each against them all). Done the same way here.
TOO_MANY_PREFIXES = 65536
MAX_SERVER_OPTIONS = 100
MAX_SERVER_OPTION_BYTES = 1024
HEX = frozenset(b"0123456789abcdef")
FETCH_FEATURES = (b"shallow", b"wait-for-done")  # `fetch=`: only what is served
MAX_DEPTH = 2**31 - 1  # git's `--unshallow` asks for this depth
# Arguments answered with an ERR until their module lands (see the docstring).
NOT_SERVED_YET = {
    b"deepen-since": "shallow fetches (deepen-since)",
    b"deepen-not": "shallow fetches (deepen-not)",
    b"deepen-relative": "shallow fetches (deepen-relative)",
    b"filter": "partial clone (filter)",
}


class RequestRefused(Exception):
    """The request was answered with an ERR line (the message); the connection ends."""


class _Refusal(Exception):
    """Raised while reading a request; `serve` turns it into the ERR line."""


@dataclass(frozen=True)
class Ref:
    """One ref as ls-refs lists it (the fields of upload/refs.py's Ref, which will
    replace `_list_refs` when it lands)."""

    name: bytes
    sha: bytes  # b"" for an unborn HEAD
    peeled: bytes | None = None
    symref_target: bytes | None = None


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
        self._refs: dict[bytes, bytes] | None = None
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

    def refs(self) -> dict[bytes, bytes]:
        """Every ref whose object is present, HEAD included: what v0 advertises too."""
        if self._refs is None:
            store = self.repo.object_store
            self._refs = {n: s for n, s in self.repo.get_refs().items() if s in store}
        return self._refs

    def _list_refs(self, prefixes: list[bytes], peel: bool) -> list[Ref]:
        """The refs ls-refs lists, HEAD first as git does; only those matching a prefix
        have their object looked up (an up-to-date fetch asks for a few of many)."""
        store = self.repo.object_store
        every = self.repo.get_refs()
        # HEAD's target only: dulwich's get_symrefs() reads every ref again (over a second
        # for 20,000), and a served repository's other refs are not symbolic.
        head = self.repo.refs.read_ref(b"HEAD") or b""
        symrefs = {b"HEAD": head[len(b"ref: ") :]} if head.startswith(b"ref: ") else {}
        matches = _prefix_matcher(prefixes, max((len(n) for n in every), default=4))
        names = sorted(n for n in every if matches(n) and every[n] in store)
        out: list[Ref] = []
        if b"HEAD" in names:
            names.remove(b"HEAD")
            names.insert(0, b"HEAD")
        elif b"HEAD" in symrefs and matches(b"HEAD"):
            out.append(Ref(b"HEAD", b"", None, symrefs[b"HEAD"]))  # unborn
        for name in names:
            sha = every[name]
            peeled = self.repo.get_peeled(name) if peel else None
            out.append(Ref(name, sha, peeled if peeled != sha else None, symrefs.get(name)))
        return out

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
        write = self.proto.write_pkt_line
        for ref in self._list_refs(prefixes, peel):
            if not ref.sha:
                if unborn:
                    target = b" symref-target:" + ref.symref_target if symrefs else b""
                    write(b"unborn HEAD" + (target or b"") + b"\n")
                continue
            line = ref.sha + b" " + ref.name
            if symrefs and ref.symref_target:
                line += b" symref-target:" + ref.symref_target
            if ref.peeled:
                line += b" peeled:" + ref.peeled
            write(line + b"\n")
        self.proto.write(FLUSH)

    # --- fetch ---------------------------------------------------------------------------

    def _fetch(self) -> None:
        args = _FetchArguments()
        for arg in self._arguments():
            _fetch_argument(args, arg)
        if args.not_served:
            raise _Refusal(f"fetch: {args.not_served} is not served by this server yet")
        refs = self.refs()
        tips = set(refs.values())
        for name in args.want_refs:
            if name not in refs:
                raise _Refusal(f"unknown ref {_shown(name)}")
            args.wants.append(refs[name])
        for sha in args.wants:
            if sha not in tips:
                # v0 serves only the refs' tips; so does v2 (no reachable-object wants yet)
                raise _Refusal(f"upload-pack: not our ref {sha.decode()}")
        if not args.wants:
            raise _Refusal("fetch: no want or want-ref lines")
        store = self.repo.object_store
        common = [sha for sha in dict.fromkeys(args.haves) if sha in store]
        reader = storedpacks.open_reader(self.repo)
        try:
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
            boundary = None
            if args.depth or args.client_shallow:
                # git sends the section whenever the client is shallow or deepens.
                self.proto.write_pkt_line(b"shallow-info\n")
                if args.depth:
                    boundary = self._shallow_info(args)
                self.proto.write(DELIM)
            if args.want_refs:
                self.proto.write_pkt_line(b"wanted-refs\n")
                for name in dict.fromkeys(args.want_refs):
                    self.proto.write_pkt_line(refs[name] + b" " + name + b"\n")
                self.proto.write(DELIM)
            self._packfile(reader, refs, args, common, boundary)
        finally:
            if reader is not None:
                reader.close()

    def _shallow_info(self, args: _FetchArguments) -> set[bytes]:
        """`shallow`/`unshallow` lines for a fetch by depth, as v0's dulwich path works
        them out (until upload/shallow.py plans them); the commits the pack stops at."""
        shallow, not_shallow = find_shallow(self.repo.object_store, args.wants, args.depth)
        boundary = shallow - not_shallow
        client = set(args.client_shallow)
        for sha in sorted(boundary - client):
            self.proto.write_pkt_line(b"shallow " + sha + b"\n")
        for sha in sorted(not_shallow & client):
            self.proto.write_pkt_line(b"unshallow " + sha + b"\n")
        return boundary

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
        args: _FetchArguments,
        common: list[bytes],
        boundary: set[bytes] | None = None,
    ) -> None:
        self.proto.write_pkt_line(b"packfile\n")
        data = sideband.writer(self.proto.write)
        progress = (
            (lambda _message: None)
            if args.no_progress
            else sideband.writer(self.proto.write, sideband.PROGRESS)
        )
        request = Fetch(
            wants=list(dict.fromkeys(args.wants)),
            haves=common,
            tagged=self._tagged(refs) if args.include_tag else {},
            ofs_delta=args.ofs_delta,
            thin_pack=args.thin_pack,
            client_shallow=frozenset(args.client_shallow),
        )
        if boundary is not None:
            self._deepen_with_dulwich(request, boundary, data, progress)
        elif reader is None:
            self._pack_with_dulwich(request, data, progress)
        else:
            send_pack(self.repo.path, reader, refs, request, data, progress)
        self.proto.write(FLUSH)

    def _tagged(self, refs: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """Peeled object -> annotated tag, for include-tag."""
        tagged = {}
        for name, sha in refs.items():
            peeled = self.repo.get_peeled(name)
            if peeled != sha:
                tagged[peeled] = sha
        return tagged

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

    def _deepen_with_dulwich(
        self,
        request: Fetch,
        boundary: set[bytes],
        write: Callable[[bytes], None],
        progress: Callable[[bytes], object],
    ) -> None:
        # v0's shallow path (upload_pack.py: _send_with_dulwich): everything from the
        # wants down to the boundary, the client's haves not subtracted.
        store = self.repo.object_store
        parents = ParentsProvider(store, shallows=boundary)
        missing = MissingObjectFinder(
            store,
            haves=[],
            wants=request.wants,
            shallow=boundary,
            get_tagged=lambda: request.tagged,
            get_parents=lambda commit: parents.get_parents(commit.id, commit),
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
    not_served: str = ""  # the first argument asked for that is not served yet


_FLAGS = {
    b"done": "done",
    b"thin-pack": "thin_pack",
    b"ofs-delta": "ofs_delta",
    b"include-tag": "include_tag",
    b"no-progress": "no_progress",
    b"wait-for-done": "wait_for_done",
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
        if not value.isdigit() or not 0 < int(value) <= MAX_DEPTH:
            raise _Refusal(f"fetch: invalid deepen: '{_shown(value)}'")
        args.depth = int(value)
    elif word in NOT_SERVED_YET and (value or word == b"deepen-relative"):
        # Where shallow.Deepen and filters.parse plug in once they land.
        args.not_served = args.not_served or NOT_SERVED_YET[word]
    else:
        raise _Refusal(f"fetch: unexpected argument '{_shown(arg)}'")


def _server_option(value: bytes, before: int) -> bytes:
    """A server option, checked: git's client sends one line of text per option."""
    if len(value) > MAX_SERVER_OPTION_BYTES or b"\0" in value:
        raise _Refusal("server-option: too long, or holds a NUL byte")
    if before >= MAX_SERVER_OPTIONS:
        raise _Refusal(f"server-option: more than {MAX_SERVER_OPTIONS} options")
    return value


def _prefix_matcher(prefixes: list[bytes], longest_name: int) -> Callable[[bytes], bool]:
    """Whether a ref name starts with one of `prefixes` (any name, if there are none):
    a set lookup per prefix length, so many prefixes cost no more than a few."""
    if not prefixes:
        return lambda _name: True
    wanted = {p for p in prefixes if len(p) <= longest_name}
    lengths = sorted({len(p) for p in wanted})
    return lambda name: any(name[:n] in wanted for n in lengths)


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
