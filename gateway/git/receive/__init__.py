"""Taking a push (git-receive-pack), with Git's semantics (SPEC §7).

`pipeline.py` runs a push in order: commands, the pack read under limits into a
quarantine (`packreader.py`, `quarantine.py`), fsck (`fsck.py`), connectivity, ref name
rules (`refcheck.py`), hooks (`hooks.py`), then the refs moved by compare-and-swap and
the per-ref report.
"""
