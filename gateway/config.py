"""Settings: defaults, then the TOML file (SPEC §3 `--config`), then `GATEWAY_*` variables.

Every setting is checked when it is loaded; a mistake names the file (or variable), the
exact key and what would be right, and nothing starts half-configured.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import Refusal

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")


@dataclass
class Settings:
    data_dir: Path = Path("var")
    listen: str = "127.0.0.1:2222"
    # What messages tell users to type; default to the listening address.
    ssh_user: str = "git"
    ssh_host: str = ""
    ssh_port: int = 0
    hooks_dir: Path = Path("hooks")
    keydir: Path = Path("keys")
    # Secrets every node behind one load balancer must share; Path(""): in the data dir.
    host_keys_dir: Path = Path("")
    master_key_file: Path = Path("")
    # The database: "" is the SQLite file in the data directory (gateway/store/db.py)
    database_url: str = ""
    database_pool_size: int = 10
    database_timeout: int = 10
    # Connections
    login_timeout: int = 30
    max_auth_tries: int = 6
    keepalive_interval: int = 60
    idle_timeout: int = 600
    max_startups: int = 1000
    max_startups_per_address: int = 10
    max_connections_per_address: int = 300
    max_sessions: int = 10
    proxy_protocol: bool = False
    grace_period: int = 30
    # Logs and metrics
    log_level: str = "info"
    log_format: str = "logfmt"
    metrics_listen: str = ""
    spare_workers: int = 1
    # Git workers (finding 4): caps, the queue, the time a request has to arrive
    max_git_workers: int = 32
    max_git_workers_per_account: int = 16
    git_queue_timeout: int = 120
    request_timeout: int = 60
    # Pushes (SPEC §7)
    hook_timeout: int = 60
    max_push_bytes: int = 2 * 1024**3
    push_ref_namespaces: tuple[str, ...] = ("refs/heads/", "refs/tags/")
    allow_unusual_ref_names: bool = False
    fsck_objects: bool = True
    # Housekeeping (gateway/git/housekeeping): repacks after pushes
    gc_auto: bool = True
    gc_auto_packs: int = 20
    gc_auto_loose: int = 1000
    gc_prune_after: int = 14 * 86400
    # Inflated sizes (delta and zlib bombs): GitHub refuses files over 100 MB.
    max_object_bytes: int = 100 * 1024**2
    max_push_inflated_bytes: int = 8 * 1024**3
    worker_memory_limit: int = 1024**3
    # Two-step verification (SPEC §5)
    issuer: str = "gateway"
    recovery_codes: int = 6
    twosv_backoff_seconds: int = 30
    recovery_codes_need_second_factor: bool = False
    # User certificates (gateway/certificates.py): files, "" for none
    trusted_user_ca_keys: str = ""
    revoked_user_certificates: str = ""

    @property
    def listen_host(self) -> str:
        return split_address(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_address(self.listen)[1]

    @property
    def public_host(self) -> str:
        if self.ssh_host:
            return self.ssh_host
        host = self.listen_host
        # Listening on every address: the machine's name reaches it from elsewhere,
        # where "localhost" in a copied clone URL would point at the user's own machine.
        return machine_name() if host in ANY_ADDRESS else host

    def loopback_host_warning(self) -> str | None:
        """Why messages would send other machines' users to themselves, if they would."""
        if is_loopback(self.listen_host) or not is_loopback(self.public_host):
            return None
        return (
            f"messages users copy (clone URLs, 2SV hints) say {self.public_host!r}, "
            f"a loopback name, but the gateway listens on {self.listen}: clients on "
            "other machines cannot reach it there; set ssh_host to the name they use"
        )

    @property
    def public_port(self) -> int:
        return self.ssh_port or self.listen_port

    def ssh_command(self, args: str) -> str:
        """The command a user copies to run one of the gateway's SSH commands."""
        port = "" if self.public_port == 22 else f"-p {self.public_port} "
        return f"ssh {port}{self.ssh_user}@{self.public_host} {args}".rstrip()

    # Paths inside the data directory (SPEC §8).
    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.db"

    @property
    def host_keys_path(self) -> Path:
        return self._in_data_dir("host_keys_dir")

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def trash_dir(self) -> Path:
        return self.data_dir / "trash"

    @property
    def master_key_path(self) -> Path:
        return self._in_data_dir("master_key_file")

    def _in_data_dir(self, name: str) -> Path:
        """A path setting's value, or its default place in the data directory."""
        value: Path = getattr(self, name)
        return self.data_dir / DATA_DIR_DEFAULTS[name] if value == Path("") else value


# Path settings whose default is a name inside the data directory.
DATA_DIR_DEFAULTS = {"host_keys_dir": "host_keys", "master_key_file": "master.key"}


ANY_ADDRESS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_machine_name: str | None = None


def machine_name() -> str:
    """The machine's fully qualified name, else its host name, else "localhost" (which
    `config check` then warns about). Looked up once: getfqdn may ask DNS."""
    global _machine_name
    if _machine_name is None:
        import socket

        candidates = (socket.getfqdn(), socket.gethostname())
        _machine_name = next((c for c in candidates if c and not is_loopback(c)), "localhost")
    return _machine_name


# --- what each setting means and which values make sense --------------------------------


def _address(value: str) -> str | None:
    try:
        split_address(value)
    except ValueError as exc:
        return str(exc)
    return None


def _optional_address(value: str) -> str | None:
    return None if value == "" else _address(value)


def _between(low: int, high: int):
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _one_of(*choices: str):
    def check(value: str) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(repr(c) for c in choices)

    return check


def _not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _namespaces(value: tuple[str, ...]) -> str | None:
    from .git.receive.refcheck import valid_namespace

    if not value:
        return "must list at least one namespace"
    bad = [v for v in value if not valid_namespace(v)]
    return f"has {bad[0]!r}: each must be 'refs/' or like 'refs/notes/'" if bad else None


def _memory_limit(value: int) -> str | None:
    # Below about 200 MiB a worker cannot even serve a small clone: 256 MiB at the least.
    return (
        None
        if value == 0 or 256 * 1024**2 <= value <= 2**62
        else "must be 0 (no limit) or at least 268435456 (256 MiB)"
    )


def _database_url(value: str) -> str | None:
    from .store import url

    return url.problem(value)


# Settings whose value may hold a secret: shown (in messages, `config check`) masked.
def shown_value(name: str, value: object) -> object:
    if name == "database_url" and isinstance(value, str):
        from .store import url

        return url.masked(value)
    return value


def _ssh_user(value: str) -> str | None:
    ok = value and all(c.isalnum() or c in "._-" for c in value) and not value.startswith("-")
    return None if ok else "must be a login name (letters, digits, '.', '_', '-')"


DAY = 86400
# name: (what it is, check); checks take the already type-checked value.
DESCRIPTIONS = {
    "listen": ("HOST:PORT the SSH server listens on", _address),
    "ssh_user": ("the SSH login name users type (git@host)", _ssh_user),
    "ssh_host": (
        "host name shown in messages users copy (empty: the listen host, or the "
        "machine's name when listening on every address)",
        None,
    ),
    "ssh_port": ("port shown in messages (0: the listen port)", _between(0, 65535)),
    "hooks_dir": ("server-side Git hooks and 2SV event hooks (SPEC §7)", None),
    "keydir": ("directory of public keys synced into accounts at start and on SIGHUP", None),
    "host_keys_dir": (
        "directory of the SSH host keys (default DATA/host_keys); several gateways behind "
        "one load balancer point it at the same keys on shared storage",
        None,
    ),
    "master_key_file": (
        "the key that seals 2SV secrets (default DATA/master.key; env GATEWAY_MASTER_KEY, "
        "64 hex digits, overrides it); several gateways share the same one",
        None,
    ),
    "database_url": (
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE to keep the state in PostgreSQL; "
        "empty: the SQLite file DATA/gateway.db",
        _database_url,
    ),
    "database_pool_size": (
        "PostgreSQL connections one gateway process keeps at most (a session holds one "
        "only for a statement or a transaction)",
        _between(1, 1000),
    ),
    "database_timeout": (
        "seconds to wait for a PostgreSQL connection (from the pool, or a new one): an "
        "unreachable server is an error line after this long, not a hang",
        _between(1, 600),
    ),
    "login_timeout": ("seconds a connection has to authenticate", _between(1, 3600)),
    "max_auth_tries": ("failed authentication attempts before disconnecting", _between(1, 100)),
    "keepalive_interval": (
        "seconds between keepalives to a silent client; 0: off",
        _between(0, DAY),
    ),
    "idle_timeout": (
        "seconds a connection may sit with no session, a prompt without an "
        "answer or a Git transfer without a byte moving; 0: never; above "
        "hook_timeout",
        _between(0, 7 * DAY),
    ),
    "max_startups": (
        "connections not yet authenticated, in all: when full, a silent or "
        "stalled one is dropped, else the new one refused",
        _between(1, 100000),
    ),
    "max_startups_per_address": (
        "an address's share of max_startups: when the cap is full, "
        "addresses over their share lose connections first",
        _between(1, 100000),
    ),
    "max_connections_per_address": (
        "connections from one address that have sent something; more are refused; 0: no limit",
        _between(0, 1000000),
    ),
    "max_sessions": ("sessions open at once on one connection", _between(1, 1000)),
    "proxy_protocol": (
        "expect a PROXY protocol v1/v2 header from a load balancer on every connection",
        None,
    ),
    "grace_period": ("seconds running sessions get to finish after SIGTERM", _between(0, DAY)),
    "log_level": ("debug, info, warning or error", _one_of(*LOG_LEVELS)),
    "log_format": ("logfmt or json, one line per event on stderr", _one_of(*LOG_FORMATS)),
    "metrics_listen": (
        "HOST:PORT of the Prometheus /metrics, /health and /ready listener; empty: off",
        _optional_address,
    ),
    "spare_workers": (
        "1 or more: each Git request's worker is forked from one process that has "
        "done its imports (the zygote, about 25 MB), saving Python's start-up "
        "(about 0.1 s of CPU) on each request; 0: start a fresh Python per request",
        _between(0, 64),
    ),
    "max_git_workers": (
        "Git requests served at once by the whole server (each holds a "
        "worker, about 25 MB); more wait for git_queue_timeout; 0: no cap",
        _between(0, 100000),
    ),
    "max_git_workers_per_account": (
        "Git requests served at once for one account (each "
        "access key counts on its own); more wait as above; "
        "0: no cap",
        _between(0, 100000),
    ),
    "git_queue_timeout": (
        "seconds a Git request over a cap waits for a worker before it is refused",
        _between(0, DAY),
    ),
    "request_timeout": (
        "seconds a Git client has, from the advertisement, to send its "
        "whole request (a fetch's wants and haves, a push's commands); "
        "0: no limit",
        _between(0, DAY),
    ),
    "hook_timeout": ("seconds a Git hook may run", _between(1, DAY)),
    "max_push_bytes": ("largest pack a push may send; 0: no limit", _between(0, 2**62)),
    "push_ref_namespaces": (
        "ref prefixes a push may create, update or delete (others get "
        'an `ng`); e.g. add "refs/notes/"',
        _namespaces,
    ),
    "allow_unusual_ref_names": (
        "accept ref names with C1 control or bidirectional characters, and refs/heads/HEAD",
        None,
    ),
    "fsck_objects": (
        "check every object a push brings as C git's receive.fsckObjects "
        "does, and refuse the push on an error",
        None,
    ),
    "gc_auto": (
        "run housekeeping by itself after a push that moved refs, when a threshold "
        "below is passed; false: only `gateway repo gc`",
        None,
    ),
    "gc_auto_packs": (
        "packs a repository may have before a push starts housekeeping; 0: not counted",
        _between(0, 100000),
    ),
    "gc_auto_loose": (
        "loose objects (estimated) a repository may have before a push starts "
        "housekeeping; 0: not counted",
        _between(0, 10**9),
    ),
    "gc_prune_after": (
        "seconds an unreachable object is kept before a full repack may remove it",
        _between(0, 100 * 365 * DAY),
    ),
    "max_object_bytes": (
        "largest object (file) a push may hold once inflated, and the "
        "largest file git archive sends; 0: no limit",
        _between(0, 2**62),
    ),
    "max_push_inflated_bytes": (
        "the most a push's objects may come to once inflated; 0: no limit",
        _between(0, 2**62),
    ),
    "worker_memory_limit": (
        "bytes of memory (RLIMIT_DATA) one Git worker process may allocate; 0: no limit",
        _memory_limit,
    ),
    "issuer": ("name shown in authenticator apps", _not_empty),
    "recovery_codes": ("recovery codes made at 2SV enrolment", _between(1, 50)),
    "twosv_backoff_seconds": ("wait after repeated wrong 2SV codes (SPEC §5)", _between(1, DAY)),
    "recovery_codes_need_second_factor": (
        "showing recovery codes, adding a security key and regenerating the codes need a "
        "code from the app or a security-key login, for every account (always so for "
        "members of a workspace with the session policy)",
        None,
    ),
    "trusted_user_ca_keys": (
        "file of CA public key lines (as sshd's TrustedUserCAKeys) whose user certificates "
        "log in, a principal naming the account; empty: no certificates",
        None,
    ),
    "revoked_user_certificates": (
        "file of revoked certificates, one 'serial N', 'key-id TEXT' or 'key SHA256:...' "
        "a line; reread on SIGHUP",
        None,
    ),
}
SETTING_NAMES = [f.name for f in fields(Settings) if f.name != "data_dir"]
assert set(SETTING_NAMES) == set(DESCRIPTIONS), "every setting is described"

ENV_PREFIX = "GATEWAY_"


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), int(port)


def parse_listen(value: str) -> str:
    try:
        split_address(value)
    except ValueError:
        raise Refusal(f"Invalid listen address: {value!r} (expected HOST:PORT)", status=2) from None
    return value


# --- loading ----------------------------------------------------------------------------


def load(data_dir: str | None = None, config_file: str | None = None) -> Settings:
    return load_with_sources(data_dir, config_file)[0]


def load_with_sources(
    data_dir: str | None = None, config_file: str | None = None
) -> tuple[Settings, dict[str, str]]:
    """The effective settings, and where each came from ("default", the file, or a
    variable's name)."""
    data_dir = data_dir or os.environ.get("GATEWAY_DATA_DIR") or "var"
    settings = Settings(data_dir=Path(data_dir))
    sources = {name: "default" for name in SETTING_NAMES}
    path = _config_path(settings, config_file)
    if path is not None:
        for key, value in _read_toml(path).items():
            _apply(settings, key, value, where=f"{path}: setting {key!r}")
            sources[key] = str(path)
    for name in SETTING_NAMES:
        raw = os.environ.get(env_name(name))
        if raw is not None:
            _apply(settings, name, _from_env(settings, name, raw), where=env_name(name))
            sources[name] = env_name(name)
    if settings.idle_timeout and settings.idle_timeout <= settings.hook_timeout:
        raise Refusal(
            f"idle_timeout ({settings.idle_timeout}, from {sources['idle_timeout']}) "
            f"must be longer than hook_timeout ({settings.hook_timeout}, from "
            f"{sources['hook_timeout']}), or 0: a push waits silently for its hooks"
        )
    return settings, sources


def _config_path(settings: Settings, config_file: str | None) -> Path | None:
    config_file = config_file or os.environ.get("GATEWAY_CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise Refusal(f"Config file not found: {path}")
        return path
    path = settings.data_dir / "gateway.toml"
    return path if path.is_file() else None


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Refusal(f"Cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise Refusal(f"Cannot read config file {path}: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise Refusal(f"{path} is not valid TOML: {exc}") from None


def _from_env(settings: Settings, name: str, raw: str):
    """A variable's text as the setting's type (TOML would have typed it)."""
    current = getattr(settings, name)
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise Refusal(f"{env_name(name)} must be true or false (got {raw!r})")
    if isinstance(current, tuple):
        return raw.replace(",", " ").split()
    if isinstance(current, int):
        try:
            return int(raw.strip())
        except ValueError:
            raise Refusal(f"{env_name(name)} must be a whole number (got {raw!r})") from None
    return raw


def _apply(settings: Settings, key: str, value, where: str) -> None:
    if key not in DESCRIPTIONS:
        hint = _closest(key)
        raise Refusal(
            f"{where}: unknown setting"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + "; 'gateway config check' lists them"
        )
    current = getattr(settings, key)
    if isinstance(current, Path):
        if not isinstance(value, str) or not value:
            raise Refusal(f"{where} must be a non-empty path string")
        value = Path(value)
    elif isinstance(current, bool):
        if not isinstance(value, bool):
            raise Refusal(f"{where} must be true or false")
    elif isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refusal(f"{where} must be a whole number")
    elif isinstance(current, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Refusal(f"{where} must be a list of strings")
        value = tuple(value)
    elif not isinstance(value, str):
        raise Refusal(f"{where} must be a string")
    check = DESCRIPTIONS[key][1]
    problem = check(value) if check else None
    if problem:
        raise Refusal(f"{where} {problem} (got {shown_value(key, value)!r})")
    setattr(settings, key, value)


def _closest(key: str) -> str | None:
    import difflib

    matches = difflib.get_close_matches(str(key), SETTING_NAMES, n=1)
    return matches[0] if matches else None


def render(settings: Settings, sources: dict[str, str]) -> list[str]:
    """The effective settings as TOML lines, each with where it came from."""
    import json

    lines = []
    for name in SETTING_NAMES:
        value = getattr(settings, name)
        if name in DATA_DIR_DEFAULTS:
            value = settings._in_data_dir(name)  # the effective path, not ""
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, tuple):
            text = json.dumps(list(value))
        else:
            text = json.dumps(str(shown_value(name, value)))
        lines.append(f"{name} = {text}  # {sources[name]}: {DESCRIPTIONS[name][0]}")
    return lines
