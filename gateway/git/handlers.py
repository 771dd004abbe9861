"""dulwich's server handlers, with the traps a measured prototype hit taken out.

- A `.bitmap` beside a pack crashes dulwich's upload-pack (FileNotFoundError on packs that
  lack one) and costs a parse on every request: reachability is always walked instead.
- `filter` (partial clone) is advertised but the lazy fetches that follow are refused:
  it is not advertised, and a client's `filter` request is ignored so the clone is full.
- Packs are built by `sendpack` from the stored packs' bytes (pack reuse) rather than by
  dulwich, which inflates and deflates every object; shallow requests and repositories
  whose packs `storedpacks` cannot read still go through dulwich.
- `git archive --remote` arguments: dulwich only takes full ref names and breaks on
  `--prefix=X`; tree-ishes are resolved the way Git does for the common forms. The tar
  stream is `archive.py`'s: dulwich's holds every file whole, and its refusal of an
  unsafe path showed as an internal error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from dulwich.errors import GitProtocolError
from dulwich.object_store import GraphTraversalReachability
from dulwich.objects import Commit, Tag, Tree, valid_hexsha
from dulwich.pack import write_pack_from_container
from dulwich.protocol import COMMAND_DEEPEN, COMMAND_SHALLOW, CAPABILITY_FILTER, CAPABILITY_NO_DONE, CAPABILITY_OFS_DELTA, \
    CAPABILITY_SIDE_BAND_64K, CAPABILITY_THIN_PACK, SIDE_BAND_CHANNEL_DATA
from dulwich.repo import Repo
from dulwich.server import Backend, UploadArchiveHandler, UploadPackHandler, _ProtocolGraphWalker

from . import archive, clonecache, receive, sendpack, storedpacks
from .commitobjects import CommitObjects

SIDE_BAND_DATA_MAX = 65515  # a pkt-line's 65520 bytes less its length and channel


class OneRepoBackend(Backend):
    """Serves the one repository the gateway already resolved and authorised."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Repo:
        return self.repo


def open_repo(path: str) -> Repo:
    repo = Repo(path)
    store = repo.object_store

    def walk_graph(prefer_bitmaps: bool = True) -> GraphTraversalReachability:
        return GraphTraversalReachability(store)

    store.get_reachability_provider = walk_graph  # type: ignore[method-assign]
    return repo


def _without_filter(caps: Iterable[bytes]) -> list[bytes]:
    return [c for c in caps if c != CAPABILITY_FILTER and not c.startswith(CAPABILITY_FILTER + b"=")]


class GatewayGraphWalker(_ProtocolGraphWalker):
    def _handle_shallow_request(self, wants) -> None:
        # dulwich expects `deepen` after a client's `shallow` lines; a fetch into a shallow
        # clone sends its shallow commits and no `deepen` ("unexpected flush-pkt" before).
        while True:
            command, value = self.read_proto_line((COMMAND_DEEPEN, COMMAND_SHALLOW, None))
            if command is None:
                return  # not deepening: the shallow commits only bound the walk
            if command == COMMAND_DEEPEN:
                self.unread_proto_line(command, value)
                super()._handle_shallow_request(wants)
                return
            self.client_shallow.add(value)


class GatewayUploadPackHandler(UploadPackHandler):
    def capabilities(self) -> list[bytes]:
        return _without_filter(super().capabilities())

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # git 2.39 sends a bare `filter` even when it was not advertised.
        super().set_client_capabilities(_without_filter(caps))

    @classmethod
    def required_capabilities(cls) -> tuple[bytes, ...]:
        # dulwich requires side-band-64k, thin-pack and ofs-delta because its packs may
        # use them; sendpack uses each only when the client asked for it.
        return ()

    def handle(self) -> None:
        """dulwich's UploadPackHandler.handle, with the pack built by `sendpack`."""
        self._processing_have_lines = True
        repo, store = self.repo, self.repo.object_store
        walker = GatewayGraphWalker(self, store, repo.get_peeled, repo.refs.get_symrefs)
        refs = {ref: sha for ref, sha in repo.get_refs().items() if sha in store}
        wants = walker.determine_wants(refs, None)
        if not wants:
            return
        reader = None if walker.shallow or walker.unshallow else storedpacks.open_reader(repo)
        if reader is None:
            self._send_with_dulwich(walker, wants)
            return
        try:
            haves = store.find_common_revisions(walker)
            if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), self._done_received):
                return
            self._start_pack_send_phase()
            tagged = self.get_tagged(refs, repo)
            try:
                if haves:
                    shas, client_has = sendpack.objects_to_send(reader, wants, haves, tagged,
                                                                shallow=walker.client_shallow)
                else:
                    shas, client_has = self._clone_objects(reader, refs, wants, tagged), set()
            except KeyError as exc:  # a ref reaches an object the repository lacks
                raise storedpacks.PackError(f"object {exc} is missing") from None
            self.progress(f"counting objects: {len(shas)}, done.\n".encode("ascii"))
            ofs_delta = self.has_capability(CAPABILITY_OFS_DELTA)
            whole = sendpack.whole_pack(reader, shas) if ofs_delta and not haves else None
            if whole is not None:
                sendpack.send_whole(self._pack_writer(), whole)
            else:
                thin = self.has_capability(CAPABILITY_THIN_PACK)
                sendpack.write_pack(self._pack_writer(), reader, shas, ofs_delta, client_has if thin else set())
            self.proto.write_pkt_line(None)
        finally:
            reader.close()

    def _clone_objects(self, reader, refs, wants: list[bytes], tagged: dict[bytes, bytes]) -> list[bytes]:
        """A clone's objects: the last clone's list if the refs are the same, else the
        commits' kept lists (commitobjects.py)."""
        cache_key = clonecache.key(refs, wants, tagged)
        shas = clonecache.load(self.repo.path, cache_key)
        if shas is None:
            commit_objects = CommitObjects(self.repo.path)
            shas, _ = sendpack.objects_to_send(reader, wants, [], tagged, commit_objects)
            commit_objects.save()
            clonecache.save(self.repo.path, cache_key, shas)
        return shas

    def _pack_writer(self):
        # Not dulwich's write_sideband: it copies the rest of the data for every pkt-line.
        if not self.has_capability(CAPABILITY_SIDE_BAND_64K):
            return self.proto.write
        write = self.proto.write
        header = b"%04x" % (SIDE_BAND_DATA_MAX + 5) + bytes([SIDE_BAND_CHANNEL_DATA])

        def write_sideband(data: bytes) -> None:
            view = memoryview(data)
            for at in range(0, len(view), SIDE_BAND_DATA_MAX):
                piece = view[at:at + SIDE_BAND_DATA_MAX]
                if len(piece) == SIDE_BAND_DATA_MAX:
                    write(header + piece)  # one write: a pkt-line is larger than the buffer
                else:
                    write(b"%04x" % (len(piece) + 5) + bytes([SIDE_BAND_CHANNEL_DATA]) + piece)

        return write_sideband

    def _send_with_dulwich(self, walker, wants: list[bytes]) -> None:
        # The rest of dulwich's own handle(): shallow and unshallow requests.
        missing = self.repo.find_missing_objects(lambda refs, depth=None: wants, walker, self.progress,
                                                 get_tagged=self.get_tagged)
        if missing is None:
            return
        object_ids = list(missing)
        if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), self._done_received):
            return
        self._start_pack_send_phase()
        self.progress(f"counting objects: {len(object_ids)}, done.\n".encode("ascii"))
        reuse = self.has_capability(CAPABILITY_THIN_PACK) and self.has_capability(CAPABILITY_OFS_DELTA)
        write_pack_from_container(self.write_pack_data, self.repo.object_store, object_ids,
                                  object_format=self.repo.object_format, reuse_deltas=reuse)
        self.proto.write_pkt_line(None)


class GatewayUploadArchiveHandler(UploadArchiveHandler):
    FORMATS = {"tar": "", "tgz": "gz", "tar.gz": "gz"}

    def handle(self) -> None:
        arguments = []
        for pkt in self.proto.read_pkt_seq():
            key, _, value = pkt.rstrip(b"\n").partition(b" ")
            if key != b"argument":
                raise GitProtocolError(f"unknown command {key!r}")
            arguments.append(value.decode("utf-8", "replace"))
        try:
            tree, fmt, prefix = self._parse(arguments)
        except ValueError as exc:
            self.proto.write_pkt_line(f"NACK {exc}".encode())
            self.proto.write_pkt_line(None)
            return
        store = self.repo.object_store
        reader = storedpacks.open_reader(self.repo)
        try:
            # Checked before ACK: a refusal (archive.ArchiveRefused) is then a clean error.
            files = archive.plan(store, reader, tree, prefix.encode(),
                                 int(os.environ.get("GATEWAY_MAX_OBJECT_BYTES") or 0))
            self.proto.write_pkt_line(b"ACK")
            self.proto.write_pkt_line(None)
            for chunk in archive.stream(store, reader, files, int(time.time()), fmt):
                for at in range(0, len(chunk), SIDE_BAND_DATA_MAX):
                    self.proto.write_sideband(SIDE_BAND_CHANNEL_DATA, chunk[at:at + SIDE_BAND_DATA_MAX])
        finally:
            if reader is not None:
                reader.close()
        self.proto.write_pkt_line(None)

    def _parse(self, arguments: list[str]) -> tuple[Tree, str, str]:
        fmt, prefix, treeish = "", "", None
        items = iter(arguments)
        for arg in items:
            if arg.startswith("--format="):
                name = arg[len("--format="):]
                if name not in self.FORMATS:
                    raise ValueError(f"unsupported archive format: {name[:40]}")
                fmt = self.FORMATS[name]
            elif arg.startswith("--prefix="):
                prefix = arg[len("--prefix="):]
            elif arg == "--prefix":
                prefix = next(items, "")
            elif arg.startswith("-"):
                raise ValueError(f"unsupported option: {arg[:40]}")
            elif treeish is None:
                treeish = arg
            else:
                raise ValueError("paths inside the tree are not supported")
        if treeish is None:
            raise ValueError("no tree-ish given")
        return self._resolve_tree(treeish), fmt, prefix

    def _ref_tips(self) -> set[bytes]:
        tips = set()
        for ref in self.repo.get_refs():
            tips.add(self.repo.refs[ref])
            peeled = self.repo.get_peeled(ref)
            if peeled:
                tips.add(peeled)
        return tips

    def _resolve_tree(self, treeish: str) -> Tree:
        name = treeish.encode()
        store = self.repo.object_store
        sha = None
        for candidate in (name, b"refs/" + name, b"refs/tags/" + name, b"refs/heads/" + name):
            if candidate == b"HEAD" or candidate.startswith(b"refs/"):
                try:
                    sha = self.repo.refs[candidate]
                    break
                except KeyError:
                    continue
        if sha is None and valid_hexsha(name) and name in self._ref_tips():
            sha = name  # like C git: no archives of unreachable objects by raw name
        if sha is None:
            raise ValueError(f"not a valid object name: {treeish[:60]}")
        obj = store[sha]
        while isinstance(obj, Tag):
            obj = store[obj.object[1]]
        if isinstance(obj, Commit):
            obj = store[obj.tree]
        if not isinstance(obj, Tree):
            raise ValueError(f"not a tree object: {treeish[:60]}")
        return obj


class GatewayReceivePackHandler:
    """Adapts the push pipeline (receive.py) to the worker's handler interface."""

    def __init__(self, backend: OneRepoBackend, args: list[str], proto) -> None:
        self.pipeline = receive.ReceivePack(backend.repo, proto, receive.Settings.from_env(dict(os.environ)))

    def handle(self) -> None:
        self.pipeline.handle()


HANDLERS = {
    "git-upload-pack": GatewayUploadPackHandler,
    "git-receive-pack": GatewayReceivePackHandler,
    "git-upload-archive": GatewayUploadArchiveHandler,
}
