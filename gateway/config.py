"""Settings: defaults, overridden by the TOML file (SPEC §3 `--config`)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import Refusal


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
    login_timeout: int = 30
    max_auth_tries: int = 6
    keepalive_interval: int = 60
    log_level: str = "info"
    # Pushes (SPEC §7)
    hook_timeout: int = 60
    max_push_bytes: int = 2 * 1024**3
    # Two-step verification (SPEC §5)
    issuer: str = "gateway"
    recovery_codes: int = 6
    twosv_backoff_seconds: int = 30

    @property
    def listen_host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def public_host(self) -> str:
        if self.ssh_host:
            return self.ssh_host
        host = self.listen_host
        return "localhost" if host in ("", "0.0.0.0", "::") else host

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
    def host_keys_dir(self) -> Path:
        return self.data_dir / "host_keys"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def trash_dir(self) -> Path:
        return self.data_dir / "trash"

    @property
    def master_key_path(self) -> Path:
        return self.data_dir / "master.key"


def parse_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Refusal(f"Invalid listen address: {value!r} (expected HOST:PORT)", status=2)
    return value


def load(data_dir: str | None = None, config_file: str | None = None) -> Settings:
    data_dir = data_dir or os.environ.get("GATEWAY_DATA_DIR") or "var"
    settings = Settings(data_dir=Path(data_dir))
    config_file = config_file or os.environ.get("GATEWAY_CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise Refusal(f"Config file not found: {path}")
    else:
        path = settings.data_dir / "gateway.toml"
        if not path.is_file():
            return settings
    try:
        values = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Refusal(f"Cannot read config file {path}: {exc}") from None
    known = {f.name: f for f in fields(Settings) if f.name != "data_dir"}
    for key, value in values.items():
        if key not in known:
            raise Refusal(f"{path}: unknown setting {key!r}")
        current = getattr(settings, key)
        expected = type(current)
        if isinstance(current, Path):
            if not isinstance(value, str):
                raise Refusal(f"{path}: setting {key!r} must be a string")
            value = Path(value)
        elif not isinstance(value, expected) or isinstance(value, bool) != isinstance(current, bool):
            raise Refusal(f"{path}: setting {key!r} must be of type {expected.__name__}")
        setattr(settings, key, value)
    parse_listen(settings.listen)
    return settings
