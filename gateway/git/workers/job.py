"""The job a worker serves: one typed record, from the server to the worker process.

The server settles the identity, the access decision and the repository path, then
hands a worker a `Job`: which service on which repository, the facts hooks are told
(who pushes, from where), and the settings the worker applies (push limits, fsck, ref
rules, logging, memory). It travels as the job header on the worker's stdin, before the
Git bytes: 4 bytes of length, then a JSON object with one member per field, read back
into the same dataclass (`Job.from_header`), every field's type checked. Nothing of it
passes through environment variables; hooks get an environment built from it
(`hook_environment`), with exactly the variables SPEC §7 and hooks/README.md list.

The descriptors a worker writes to (the operator's log, the status pipe) belong to the
process, not to the job: the pool passes them by number on the worker's command line.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ...decision import Pusher, RefRule
from ..receive.limits import Limits
from ..receive.pipeline import PushSettings
from ..receive.refcheck import DEFAULT_NAMESPACES
from ..receive.signed import SigningKey

HEADER_LENGTH_BYTES = 4


class BadJob(ValueError):
    """A job header that is not a Job (a server and worker of different versions)."""


@dataclass(frozen=True)
class Job:
    service: str  # git-upload-pack, git-receive-pack or git-upload-archive
    repo_dir: str  # resolved by the server, inside the repositories root
    # Who and where, for the hooks (GATEWAY_* variables) and the worker's log lines.
    account: str = ""
    workspace: str = ""
    repository: str = ""  # WORKSPACE/NAME
    key_fingerprint: str = ""
    remote_addr: str = ""
    path: str = "/usr/bin:/bin"  # PATH for hooks: the server's own
    hooks_dir: str = ""  # "": no hooks
    hook_timeout: int = 60  # seconds
    # What a push may bring (receive.packreader, receive.fsck, receive.refcheck).
    max_push_bytes: int = 0  # 0: no limit
    max_object_bytes: int = 0
    max_push_inflated_bytes: int = 0
    fsck_objects: bool = True
    push_ref_namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
    allow_unusual_ref_names: bool = False
    # The worker process itself.
    log_level: str = "warning"
    log_format: str = "logfmt"
    worker_memory_limit: int = 0  # bytes of RLIMIT_DATA; 0: leave it
    # PostgreSQL's URL (password and all: the job travels on stdin, never argv or the
    # environment) for the cross-node ref lock (store/nodelock.py); "": SQLite.
    database_url: str = dataclasses.field(default="", repr=False)
    # The client's GIT_PROTOCOL, checked by the server (git/protocol.py); "": v0.
    git_protocol: str = ""
    # Branch rules, decided per ref in the worker (decision.decide_ref): the rules the
    # repository answers to, who pushes, the signing keys rules may ask for, and how
    # users reach the gateway (for the instructions in a refusal).
    branch_rules: tuple[RefRule, ...] = ()
    pusher: Pusher = field(default_factory=Pusher)
    signing_keys: tuple[SigningKey, ...] = ()
    ssh_command: str = "ssh git@HOST"

    # --- the header --------------------------------------------------------------------

    def header(self) -> bytes:
        """The bytes the pool writes before the Git stream."""
        body = json.dumps(dataclasses.asdict(self)).encode()
        return len(body).to_bytes(HEADER_LENGTH_BYTES, "big") + body

    @classmethod
    def from_header(cls, stdin: BinaryIO) -> Job | None:
        """Read exactly the header, so that not a byte of the Git stream after it is
        consumed. None if the server closed stdin before giving a job (at shutdown)."""
        head = _read_exactly(stdin, HEADER_LENGTH_BYTES)
        if head is None:
            return None
        body = _read_exactly(stdin, int.from_bytes(head, "big"))
        if body is None:
            return None
        try:
            fields = json.loads(body)
        except ValueError as exc:
            raise BadJob(f"job header is not JSON: {exc}") from None
        return cls.from_fields(fields)

    @classmethod
    def from_fields(cls, fields: Any) -> Job:
        job = _record(cls, "job header", fields)
        assert isinstance(job, Job)
        return job

    # --- what the worker derives from it ----------------------------------------------

    def hook_environment(self) -> dict[str, str]:
        """The environment every hook starts from (SPEC §7, hooks/README.md); the push
        pipeline adds GIT_DIR, GIT_NO_REPLACE_OBJECTS, push options and quarantine paths."""
        return {
            "PATH": self.path,
            "GATEWAY_ACCOUNT": self.account,
            "GATEWAY_WORKSPACE": self.workspace,
            "GATEWAY_REPOSITORY": self.repository,
            "GATEWAY_KEY_FINGERPRINT": self.key_fingerprint,
            "GATEWAY_REMOTE_ADDR": self.remote_addr,
            "GATEWAY_HOOKS_DIR": self.hooks_dir,
            "GATEWAY_HOOK_TIMEOUT": str(self.hook_timeout),
        }

    def push_settings(self, status_fd: int | None = None) -> PushSettings:
        return PushSettings(
            hooks_dir=self.hooks_dir or None,
            hook_timeout=float(self.hook_timeout),
            max_push_bytes=self.max_push_bytes or None,
            hook_env=self.hook_environment(),
            namespaces=self.push_ref_namespaces or DEFAULT_NAMESPACES,
            allow_unusual_ref_names=self.allow_unusual_ref_names,
            status_fd=status_fd,
            fsck_objects=self.fsck_objects,
            limits=self.limits(),
            rules=self.branch_rules,
            pusher=self.pusher,
            signing_keys=self.signing_keys,
            ssh_command=self.ssh_command,
            database_url=self.database_url,
        )

    def limits(self) -> Limits:
        return Limits(self.max_object_bytes, self.max_push_inflated_bytes, self.worker_memory_limit)


def _record(cls: type, what: str, fields: Any) -> Any:
    """A dataclass (the Job, or a record inside it) from a JSON object, every field's
    type checked."""
    if not isinstance(fields, dict):
        raise BadJob(f"{what} is not an object")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise BadJob(f"unknown fields in {what}: {', '.join(sorted(unknown))}")
    values = {name: _typed(name, hints[name], value) for name, value in fields.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # a required field missing
        raise BadJob(str(exc)) from None


def _typed(name: str, hint: Any, value: Any) -> Any:
    """`value` as the field's type, or BadJob: JSON has no tuples, and bool is an int."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _record(hint, f"job field {name}", value)
    elif typing.get_origin(hint) is tuple:
        (item, _more) = typing.get_args(hint)
        ok = isinstance(value, list)
        value = tuple(_typed(name, item, v) for v in value) if ok else value
    else:  # a field of a type this function does not know yet
        raise BadJob(f"job field {name} has an unsupported type")
    if not ok:
        raise BadJob(f"job field {name} has the wrong type")
    return value


def _read_exactly(stdin: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stdin.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
