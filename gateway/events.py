"""2SV events: written to the audit log and handed to `HOOKS_DIR/2sv-event.d/*`.

Each executable there gets one JSON object on stdin, so operators can notify the user.
A key that can log in being added is such an event too, whoever added it (a stolen key's
holder adding one of their own is how they would stay in), and so is a user removing one.
Events never hold a secret or a code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from .store import audit
from .store.database import Database

log = logging.getLogger("gateway.events")
HOOK_TIMEOUT = 10


async def twosv_event(
    db: Database,
    hooks_dir: Path,
    account: str,
    event: str,
    *,
    outcome: str = "ok",
    detail: str = "",
    key_fingerprint: str = "",
    remote_addr: str = "",
) -> None:
    await audit.write(db, account, event, account, outcome=outcome, detail=detail)
    await db.commit()
    await notify(
        hooks_dir,
        account,
        event,
        outcome=outcome,
        detail=detail,
        key_fingerprint=key_fingerprint,
        remote_addr=remote_addr,
    )


async def notify(
    hooks_dir: Path,
    account: str,
    event: str,
    *,
    outcome: str = "ok",
    detail: str = "",
    key_fingerprint: str = "",
    remote_addr: str = "",
) -> None:
    """Hand an event (already audited by the caller) to the hooks."""
    payload = {
        "event": event,
        "account": account,
        "outcome": outcome,
        "detail": detail,
        "key_fingerprint": key_fingerprint,
        "remote_addr": remote_addr,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    await run_hooks(hooks_dir / "2sv-event.d", json.dumps(payload).encode() + b"\n")


async def run_hooks(directory: Path, stdin: bytes) -> None:
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not os.access(path, os.X_OK) or path.name.startswith("."):
            continue
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path.resolve()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
            _, err = await asyncio.wait_for(proc.communicate(stdin), HOOK_TIMEOUT)
            if proc.returncode:
                log.warning(
                    "hook %s exited %s: %s",
                    path.name,
                    proc.returncode,
                    err.decode(errors="replace").strip()[:200],
                )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("hook %s took longer than %s s and was stopped", path.name, HOOK_TIMEOUT)
        except OSError as exc:
            log.warning("hook %s could not run: %s", path.name, exc)
