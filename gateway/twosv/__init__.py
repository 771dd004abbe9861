"""Two-step verification: TOTP, recovery codes, failure throttling, sealing (SPEC §5)."""
