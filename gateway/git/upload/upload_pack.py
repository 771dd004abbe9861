"""Upload-pack (clone, fetch, ls-remote): dulwich's negotiation, the gateway's packs.

The traps a measured prototype hit in dulwich's UploadPackHandler, taken out:
- A `.bitmap` beside a pack crashes dulwich's upload-pack (FileNotFoundError on packs that
  lack one) and costs a parse on every request: reachability is always walked instead
  (`open_repo` in ../handlers.py).
- `filter` (partial clone) is advertised but dulwich builds the whole pack and then drops
  objects, and the lazy fetches that follow (wants that are not ref tips) are refused:
  the client's `filter` line is read here (filters.parse) and applied by walk.py, and
  any want a ref reaches is served (`allow-reachable-sha1-in-want`, reachable.py).
- dulwich reads only `shallow` and `deepen` lines (not `deepen-since`, `deepen-not`,
  `deepen-relative`) and walks shallow requests object by object: the request's shallow
  lines are read here and answered by shallow.py's plan, sent as C git sends it.
- Packs are built by `packwriter` from the stored packs' bytes (pack reuse) rather than
  by dulwich, which inflates and deflates every object. A SHA-1 repository whose pack
  indexes `storedpacks` cannot read is served the same way with objects read through
  dulwich; only a repository of another hash goes through dulwich's pack writing, and
  it is not served shallow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from dulwich.errors import GitProtocolError
from dulwich.objects import valid_hexsha
from dulwich.pack import write_pack_from_container
from dulwich.protocol import (
    CAPABILITY_ALLOW_REACHABLE_SHA1_IN_WANT,
    CAPABILITY_DEEPEN_NOT,
    CAPABILITY_DEEPEN_RELATIVE,
    CAPABILITY_DEEPEN_SINCE,
    CAPABILITY_FILTER,
    CAPABILITY_INCLUDE_TAG,
    CAPABILITY_NO_DONE,
    CAPABILITY_OFS_DELTA,
    CAPABILITY_SIDE_BAND_64K,
    CAPABILITY_THIN_PACK,
    COMMAND_DEEPEN,
    COMMAND_DEEPEN_NOT,
    COMMAND_DEEPEN_SINCE,
    COMMAND_FILTER,
    COMMAND_SHALLOW,
    COMMAND_WANT,
    ack_type,
    extract_want_line_capabilities,
    format_shallow_line,
    format_unshallow_line,
)
from dulwich.server import PackHandler, UploadPackHandler

from ..dulwich_seam import (
    ProtocolGraphWalker,
    done_received,
    start_have_lines,
    start_pack_send_phase,
)
from . import filters, reachable, shallow, sideband, storedpacks
from .fetch import Fetch, send_pack
from .filters import FilterError, ObjectFilter
from .reachable import NotReachable
from .refs import Ref, head_target, list_refs
from .refusal import RequestRefused
from .shallow import Deepen, ShallowError, ShallowPlan

DEEPEN_CAPABILITIES = [CAPABILITY_DEEPEN_SINCE, CAPABILITY_DEEPEN_NOT, CAPABILITY_DEEPEN_RELATIVE]
SHALLOW_SECTION = (COMMAND_SHALLOW, COMMAND_DEEPEN, COMMAND_DEEPEN_SINCE, COMMAND_DEEPEN_NOT)
MAX_SHALLOW_LINES = 100_000  # a client's shallow commits: far more than any real clone has


def symrefs(repo) -> dict[bytes, bytes]:
    """The `symref=` capability: HEAD's target, even when it does not exist yet (as dulwich
    gives it). Only HEAD's, as C git: git 2.39 spins for ever on a v0 advertisement that
    names another symbolic ref (refs/remotes/origin/HEAD in a mirror)."""
    head = head_target(repo.controldir())
    return {} if head is None else {b"HEAD": head}


class GatewayGraphWalker(ProtocolGraphWalker):
    """dulwich's v0 negotiation, with the request read here: after the wants come
    `filter`, then `shallow`, `deepen`, `deepen-since`, `deepen-not` lines, then a flush.
    dulwich refuses a want that is not a ref tip (a partial clone's lazy fetch:
    reachable.check_wants decides instead) and knows only `shallow` and `deepen`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.object_filter: ObjectFilter | None = None
        self.deepen: Deepen | None = None

    def determine_wants(self, heads, depth=None) -> list[bytes]:
        if self.advertise_refs or not self.stateless_rpc:
            advertise_only = self.advertise_refs
            self.advertise_refs = True  # dulwich's determine_wants stops after advertising
            try:
                super().determine_wants(heads, depth)
            finally:
                self.advertise_refs = advertise_only
            if advertise_only:
                return []
        first = self.proto.read_pkt_line()
        if not first:
            return []
        line, caps = extract_want_line_capabilities(first)
        self.handler.set_client_capabilities(caps)
        self.set_ack_type(ack_type(caps))
        wants: list[bytes] = []
        request: bytes | None = line
        while request:
            command, _, value = request.rstrip(b"\n").partition(b" ")
            if command in SHALLOW_SECTION:
                self._read_shallow_section(request)
                break
            if command == COMMAND_WANT:
                if not valid_hexsha(value) or len(value) != 40:
                    raise GitProtocolError("invalid want line: not an object name")
                wants.append(value.lower())
            elif command == COMMAND_FILTER:
                self._take_filter(value)
            else:
                raise GitProtocolError(f"unexpected line in the request: {command[:20]!r}")
            request = self.proto.read_pkt_line()
        self.set_wants(wants)
        if self.stateless_rpc and self.proto.eof():
            return []
        return wants

    def _take_filter(self, spec: bytes) -> None:
        if not self.handler.has_capability(CAPABILITY_FILTER):
            raise FilterError("a filter line without the filter capability")
        if self.object_filter is not None:
            raise FilterError("more than one filter line")
        self.object_filter = filters.parse(spec)

    def _read_shallow_section(self, line: bytes | None) -> None:
        depth, since, not_refs, deepening, count = 0, None, [], False, 0
        while line:
            command, _, value = line.rstrip(b"\n").partition(b" ")
            count += 1
            if count > MAX_SHALLOW_LINES:
                raise ShallowError(f"more than {MAX_SHALLOW_LINES} shallow lines")
            if command == COMMAND_SHALLOW:
                if not valid_hexsha(value) or len(value) != 40:
                    raise ShallowError("invalid shallow line: not an object name")
                self.client_shallow.add(value.lower())
            elif command == COMMAND_DEEPEN:
                depth, deepening = shallow.parse_depth(value), True
            elif command == COMMAND_DEEPEN_SINCE:
                since, deepening = shallow.parse_since(value), True
            elif command == COMMAND_DEEPEN_NOT and value:
                not_refs.append(value)
                deepening = True
            elif command == COMMAND_FILTER:
                self._take_filter(value)
            else:
                raise ShallowError(f"unexpected line in the shallow request: {command[:20]!r}")
            line = self.proto.read_pkt_line()
        if deepening:
            relative = self.handler.has_capability(CAPABILITY_DEEPEN_RELATIVE)
            self.deepen = Deepen(depth, since, tuple(not_refs), relative)

    def send_shallow_plan(self, plan: ShallowPlan) -> None:
        """v0: the plan's lines and a flush, only when the client asked to deepen."""
        if not plan.deepened:
            return
        for sha in plan.shallow:
            self.proto.write_pkt_line(format_shallow_line(sha))
        for sha in plan.unshallow:
            self.proto.write_pkt_line(format_unshallow_line(sha))
        self.proto.write_pkt_line(None)


class GatewayUploadPackHandler(UploadPackHandler):
    def capabilities(self) -> list[bytes]:
        # Wants by id (a partial clone's lazy fetches) are served when a ref reaches them.
        return [
            *super().capabilities(),
            *DEEPEN_CAPABILITIES,
            CAPABILITY_ALLOW_REACHABLE_SHA1_IN_WANT,
        ]

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # Not dulwich's: it parses a `filter=` capability with its own filter code.
        PackHandler.set_client_capabilities(self, caps)

    @classmethod
    def required_capabilities(cls) -> tuple[bytes, ...]:
        # dulwich requires side-band-64k, thin-pack and ofs-delta because its packs may
        # use them; packwriter uses each only when the client asked for it.
        return ()

    def handle(self) -> None:
        """dulwich's UploadPackHandler.handle, with the pack built by `packwriter`."""
        start_have_lines(self)
        repo, store = self.repo, self.repo.object_store
        listed = list_refs(repo.controldir(), store=store)
        refs = {ref.name: ref.sha for ref in listed}
        peeled = {ref.name: ref.peeled for ref in listed if ref.peeled is not None}
        walker = GatewayGraphWalker(self, store, peeled.get, lambda: symrefs(repo))
        try:
            wants = walker.determine_wants(refs, None)
        except FilterError as exc:
            self._refuse(str(exc))
        if not wants:
            return
        reader = storedpacks.reader_for(repo)
        if reader is None:
            if not set(refs.values()).issuperset(wants):
                self._refuse(str(NotReachable(next(w for w in wants if w not in refs.values()))))
            if walker.deepen is not None or walker.client_shallow:
                raise ShallowError("shallow fetches are served from SHA-1 repositories only")
            self._send_with_dulwich(walker, wants)
            return
        try:
            try:
                reachable.check_wants(repo.path, reader, refs, wants)
            except NotReachable as exc:
                self._refuse(str(exc))
            plan = None
            if walker.deepen is not None or walker.client_shallow:
                plan = shallow.plan(reader, refs, wants, walker.client_shallow, walker.deepen)
                walker.send_shallow_plan(plan)
            haves = store.find_common_revisions(walker)
            if not walker.handle_done(
                not self.has_capability(CAPABILITY_NO_DONE), done_received(self)
            ):
                return
            start_pack_send_phase(self)
            request = Fetch(
                wants=wants,
                haves=haves,
                tagged=self._tagged(listed),
                ofs_delta=self.has_capability(CAPABILITY_OFS_DELTA),
                thin_pack=self.has_capability(CAPABILITY_THIN_PACK),
                client_shallow=frozenset(walker.client_shallow),
                object_filter=walker.object_filter,
                deepen=walker.deepen,
                shallow_plan=plan,
            )
            send_pack(repo.path, reader, refs, request, self._pack_writer(), self.progress)
            self._end_pack()
        finally:
            reader.close()

    def _tagged(self, listed: list[Ref]) -> dict[bytes, bytes]:
        """What include-tag needs: peeled object -> annotated tag (dulwich's get_tagged,
        from the listed refs instead of a peel per ref)."""
        if not self.has_capability(CAPABILITY_INCLUDE_TAG):
            return {}
        return {ref.peeled: ref.sha for ref in listed if ref.peeled is not None}

    def _refuse(self, message: str) -> NoReturn:
        """One ERR pkt-line (git prints it as `fatal: remote error: ...`), then the
        request ends (the worker logs it and exits non-zero, as C git dies)."""
        self.proto.write_pkt_line(b"ERR " + message.encode("ascii", "backslashreplace"))
        raise RequestRefused(message)

    def _end_pack(self) -> None:
        """A flush after the side-band stream; a pack sent bare ends with its checksum
        (as C git's: the client's index-pack calls anything after it junk)."""
        if self.has_capability(CAPABILITY_SIDE_BAND_64K):
            self.proto.write_pkt_line(None)

    def _pack_writer(self):
        if not self.has_capability(CAPABILITY_SIDE_BAND_64K):
            return self.proto.write
        return sideband.writer(self.proto.write)

    def _send_with_dulwich(self, walker, wants: list[bytes]) -> None:
        # The rest of dulwich's own handle(), for a repository whose objects are not
        # SHA-1 (storedpacks and packwriter read and write SHA-1 packs only).
        missing = self.repo.find_missing_objects(
            lambda refs, depth=None: wants, walker, self.progress, get_tagged=self.get_tagged
        )
        if missing is None:
            return
        object_ids = list(missing)
        if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), done_received(self)):
            return
        start_pack_send_phase(self)
        self.progress(f"counting objects: {len(object_ids)}, done.\n".encode("ascii"))
        reuse = self.has_capability(CAPABILITY_THIN_PACK) and self.has_capability(
            CAPABILITY_OFS_DELTA
        )
        write_pack_from_container(
            self.write_pack_data,
            self.repo.object_store,
            object_ids,
            object_format=self.repo.object_format,
            reuse_deltas=reuse,
        )
        self._end_pack()
