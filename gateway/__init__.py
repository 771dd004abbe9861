"""gateway: an SSH and Git-over-SSH gateway with two-step verification."""

__version__ = "0.1.0"
