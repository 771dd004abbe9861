"""The housekeeper process the scheduler starts: `python -m gateway.git.housekeeping
REPO_DIR --name WORKSPACE/NAME --prune-after SECONDS`. Nice'd; one log line for what it
did and one per problem, never a traceback. With `--database-url-on-stdin`, the first
line of stdin is the PostgreSQL URL for the cross-node refs lock (a password in argv
would show in `ps`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ...logs import log_event, setup
from . import gc
from .lock import Busy

log = logging.getLogger("gateway.housekeeping")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.git.housekeeping")
    parser.add_argument("repo_dir")
    parser.add_argument("--name", default="")
    parser.add_argument("--prune-after", type=int, default=gc.DEFAULT_PRUNE_AFTER)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="logfmt")
    parser.add_argument("--database-url-on-stdin", action="store_true")
    args = parser.parse_args(argv)
    setup(args.log_level, args.log_format)
    try:
        os.nice(10)
    except OSError:
        pass
    name = args.name or args.repo_dir
    database_url = sys.stdin.readline().strip() if args.database_url_on_stdin else ""
    options = gc.Options(full=args.full, prune_after=args.prune_after, database_url=database_url)
    try:
        report = gc.run(args.repo_dir, options)
    except Busy:
        log_event(log, "housekeeping.busy", repository=name)
        return 0
    except gc.NotARepository as exc:
        log_event(log, "housekeeping.failed", logging.WARNING, repository=name, reason=str(exc))
        return 1
    except Exception as exc:  # a bug: one line, the repository as it was
        log_event(
            log,
            "housekeeping.failed",
            logging.ERROR,
            repository=name,
            reason=f"{exc.__class__.__name__}: {exc}",
        )
        return 1
    for note in report.notes:
        log_event(log, "housekeeping.note", repository=name, note=note)
    for problem in report.problems:
        log_event(log, "housekeeping.problem", logging.WARNING, repository=name, problem=problem)
    log_event(
        log,
        "housekeeping.done",
        repository=name,
        mode=report.mode,
        packs_before=report.packs_before,
        packs_after=report.packs_after,
        objects=report.objects,
        loose_packed=report.loose_packed,
        pruned=report.pruned,
        refs_packed=report.refs_packed,
        bytes_before=report.bytes_before,
        bytes_after=report.bytes_after,
        seconds=round(report.seconds, 3),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
