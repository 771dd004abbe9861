"""Refusals are values a user is meant to read; anything else is a bug."""


class Refusal(Exception):
    """An operation refused for a reason the user can act on.

    The message is shown as it is (after `ERROR: `); `status` is the exit status.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UsageError(Refusal):
    """The command line itself was wrong (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=2)
