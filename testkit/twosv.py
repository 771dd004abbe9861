"""Two-step verification as a user drives it over the real `ssh`: codes from pyotp, an
interactive session answered on stdin, `2sv enable` done in one call. Shared by the 2SV,
security-key, stolen-key, workspace-policy, backup and OpenSSH tests."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pyotp

from .keys import User
from .server import Gateway

URI_RE = re.compile(r"URI:\s+(otpauth://\S+)")
CODE_RE = re.compile(r"^\s+([0-9a-z]{5}-[0-9a-z]{5})(\s+\(used\))?$", re.M)


def code_at(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


def fresh_code(secret: str) -> str:
    """The next step's code: one step of drift is allowed, and it is newer than any
    step used so far in a test that just enrolled."""
    return code_at(secret, 1)


class Session:
    """An interactive `ssh` command: read its output as it comes, answer on stdin."""

    def __init__(self, gw: Gateway, user: User, *command: str) -> None:
        self.proc = subprocess.Popen(
            [*gw.ssh_command(user.key), "-p", str(gw.port), "git@127.0.0.1", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=gw.env,
        )
        self.out = b""

    def read_until(self, pattern: re.Pattern, timeout: float = 20) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.out.decode(errors="replace"))
            if match:
                return match
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                break
            self.out += chunk
        raise AssertionError(
            f"{pattern.pattern!r} not in output: {self.out.decode(errors='replace')}"
        )

    def answer(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> subprocess.CompletedProcess:
        if self.proc.stdin.closed:
            self.proc.stdin = None
        out, err = self.proc.communicate(timeout=timeout)
        self.out += out
        return subprocess.CompletedProcess(
            self.proc.args,
            self.proc.returncode,
            self.out.decode(errors="replace"),
            err.decode(errors="replace"),
        )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR: ")]


def enable(gw: Gateway, user: User) -> tuple[str, list[str], str]:
    """Turn 2SV on for `user`; returns the TOTP secret, the recovery codes and the output."""
    session = Session(gw, user, "2sv", "enable")
    uri = session.read_until(URI_RE).group(1)
    secret = pyotp.parse_uri(uri).secret
    session.answer(code_at(secret))
    result = session.finish()
    assert result.returncode == 0, result.stderr
    codes = [m.group(1) for m in CODE_RE.finditer(result.stdout)]
    return secret, codes, result.stdout


def audit_actions(gw: Gateway, user: User) -> list[dict]:
    return json.loads(gw.cli("audit", "--account", user.name, "--json", "--limit", "500").stdout)
