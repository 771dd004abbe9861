"""The one way an upload-pack request is refused, in v0 and v2 alike."""


class RequestRefused(Exception):
    """The request was answered with an ERR line (the message); the connection ends,
    and the worker exits non-zero with a `git.refused` log line, as C git dies."""
