"""Structured logs: one line per event on stderr, as logfmt or JSON (setting `log_format`).

Events carry named fields (`log_event(log, "auth.ok", peer=..., account=...)`); plain
messages from elsewhere become an event `message` with a `msg` field. The journal keeps
stderr lines as they are. Callers never pass secrets or codes: fields are written as given.
"""

from __future__ import annotations

import json
import logging
import time


class StructuredFormatter(logging.Formatter):
    def __init__(self, style: str, tracebacks: bool) -> None:
        super().__init__()
        self.style = style
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "message"),
        }
        extra = getattr(record, "fields", None)
        if extra is not None:
            fields.update(extra)
        else:
            fields["msg"] = record.getMessage()
        if record.exc_info and self.tracebacks:
            fields["traceback"] = self.formatException(record.exc_info)
        if self.style == "json":
            return json.dumps(fields, default=str)  # non-ASCII escaped: no bidi tricks
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


def _logfmt_value(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and all(c.isprintable() and c not in ' ="\\' for c in text):
        return text
    return json.dumps(text)  # quoted; controls, escapes and bidi characters escaped


def setup(level: str, style: str) -> None:
    """Send the gateway's records to stderr in the chosen format (again on SIGHUP)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_gateway", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._gateway = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(StructuredFormatter(style, tracebacks=level == "debug"))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, event, extra={"event": event, "fields": fields})
