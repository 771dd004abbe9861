"""The handler for each Git service, as dulwich's server calls them, and the one
repository they serve.

A worker (workers/worker.py) opens the repository with `open_repo`, looks up the
service in `HANDLERS` and calls `handle()` on what the entry returns. Each entry takes
the repository, the pkt-line protocol and the job (workers/job.py), and gives its
handler only the settings it applies: upload-pack none, upload-archive the object size
limit, receive-pack the push settings.

The protocol version is the client's (Job.git_protocol), as C git chooses it: upload-pack
speaks v2 when asked for it (upload/v2.py); upload-pack and receive-pack asked for v1
say `version 1` first and go on in v0; receive-pack asked for v2 speaks v0 (git has no
v2 push), and upload-archive always speaks v0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dulwich.object_store import GraphTraversalReachability
from dulwich.protocol import Protocol as PktLineProtocol
from dulwich.repo import Repo
from dulwich.server import Backend

from . import protocol
from .receive.pipeline import ReceivePack
from .upload.upload_archive import GatewayUploadArchiveHandler
from .upload.upload_pack import GatewayUploadPackHandler
from .upload.v2 import UploadPackV2

if TYPE_CHECKING:
    from .workers.job import Job


class OneRepoBackend(Backend):
    """Serves the one repository the gateway already resolved and authorised."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Repo:
        return self.repo


def open_repo(path: str) -> Repo:
    """The repository, with reachability always walked: a `.bitmap` beside a pack
    crashes dulwich's upload-pack on packs that lack one, and costs a parse each time."""
    repo = Repo(path)
    store = repo.object_store

    def walk_graph(prefer_bitmaps: bool = True) -> GraphTraversalReachability:
        return GraphTraversalReachability(store)

    store.get_reachability_provider = walk_graph  # type: ignore[method-assign]
    return repo


class Handler(Protocol):
    def handle(self) -> object: ...


class VersionOne:
    """Protocol v1: v0 after one `version 1` pkt-line, as git's servers send it."""

    def __init__(self, proto: PktLineProtocol, handler: Handler) -> None:
        self.proto = proto
        self.handler = handler

    def handle(self) -> object:
        self.proto.write_pkt_line(b"version 1\n")
        return self.handler.handle()


def _in_version(job: Job, proto: PktLineProtocol, handler: Handler) -> Handler:
    return VersionOne(proto, handler) if protocol.version(job.git_protocol) == 1 else handler


def _upload_pack(repo: Repo, proto: PktLineProtocol, job: Job, status_fd: int | None) -> Handler:
    if protocol.version(job.git_protocol) == 2:
        return UploadPackV2(repo, proto)
    return _in_version(
        job, proto, GatewayUploadPackHandler(OneRepoBackend(repo), [job.repo_dir], proto)
    )


def _upload_archive(repo: Repo, proto: PktLineProtocol, job: Job, status_fd: int | None) -> Handler:
    return GatewayUploadArchiveHandler(
        OneRepoBackend(repo), [job.repo_dir], proto, max_object_bytes=job.max_object_bytes
    )


def _receive_pack(repo: Repo, proto: PktLineProtocol, job: Job, status_fd: int | None) -> Handler:
    return _in_version(job, proto, ReceivePack(repo, proto, job.push_settings(status_fd)))


HANDLERS: dict[str, Callable[[Repo, PktLineProtocol, Job, int | None], Handler]] = {
    "git-upload-pack": _upload_pack,
    "git-receive-pack": _receive_pack,
    "git-upload-archive": _upload_archive,
}
