"""How the gateway's SSH packets go out (gateway/transport/asyncssh_seam.py, part 5):
no CBC countermeasure packets, and a pack delivered whole through a tiny window (the
packets of one pass of the event loop are written together)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from testkit import Gateway, local_git
from testkit.sshclient import connect


def test_the_client_receives_no_ignore_packets(gw: Gateway) -> None:
    # asyncssh sends an empty SSH_MSG_IGNORE before every packet; OpenSSH's client at
    # debug3 says so for each one it receives.
    user = gw.user()
    command = gw.ssh_command(user.key)
    command.insert(1, "-vvv")
    result = subprocess.run(
        [*command, "-p", str(gw.port), "git@127.0.0.1", "whoami"],
        capture_output=True,
        env=gw.env,
        timeout=60,
    )
    assert result.stdout.decode().strip() == user.name
    debug = result.stderr.decode(errors="replace")
    assert "receive packet: type 52" in debug  # the log shows received packets at all
    assert "SSH2_MSG_IGNORE" not in debug


def test_a_pack_reaches_a_client_with_a_tiny_window_whole(gw: Gateway, tmp_path: Path) -> None:
    # A 2 MB blob through a 4 KiB window: every packet waits for the window to reopen.
    # Asked for without side-band, the pack comes bare and ends with its checksum.
    user = gw.user()
    path = gw.repo(gw.workspace((user, "write")), "tiny-window")
    tree = tmp_path / "tree"
    tree.mkdir()
    local_git("init", "-q", "-b", "main", cwd=tree, env=gw.env)
    (tree / "noise.bin").write_bytes(os.urandom(2_000_000))
    local_git("add", "noise.bin", cwd=tree, env=gw.env)
    local_git("commit", "-q", "-m", "noise", cwd=tree, env=gw.env)
    gw.git(user, "push", "-q", gw.url(path), "main:main", cwd=tree)
    head = local_git("rev-parse", "HEAD", cwd=tree).strip()

    async def fetch_pack() -> bytes:
        async with connect(gw, user.key) as conn:
            stdin, stdout, _ = await conn.open_session(
                f"git-upload-pack '{path}.git'", encoding=None, window=4096
            )
            advertised = b""
            while not advertised.endswith(b"0000"):
                advertised += await stdout.read(65536)
            assert head.encode() in advertised
            want = f"want {head} ofs-delta\n".encode()
            stdin.write(b"%04x%s00000009done\n" % (len(want) + 4, want))
            out = b""
            while chunk := await stdout.read(65536):
                out += chunk
            return out

    out = asyncio.run(asyncio.wait_for(fetch_pack(), 120))
    assert out.startswith(b"0008NAK\n")
    pack = tmp_path / "received.pack"
    pack.write_bytes(out[len(b"0008NAK\n") :])
    # index-pack checks the pack's checksum and every object in it.
    local_git("index-pack", str(pack), cwd=tmp_path)
    listed = local_git("verify-pack", "-v", str(pack.with_suffix(".idx")), cwd=tmp_path)
    assert "blob" in listed and head in listed
