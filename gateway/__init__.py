"""gateway: an SSH and Git-over-SSH gateway with two-step verification."""
