"""The operations on accounts, keys, workspaces and repositories, for the operator's CLI
and the SSH commands alike.

Each operation validates the names it is given, changes the store, writes its audit
row(s), commits and hands the hooks their event, then returns what happened as a value:
a caller only words and prints it, and cannot forget the audit row or the commit. Who
acts ("operator" or an account's name) is always a parameter. Two-step verification
itself has its service in `gateway/twosv/service.py`.
"""

OPERATOR = "operator"  # the actor of the CLI's changes in the audit log
