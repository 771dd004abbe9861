"""Housekeeping: keeping a repository's packs and loose objects few (issue 17).

Every push adds a pack, and the cost of serving grows with their number. After a push
that moved refs the server asks the scheduler (scheduler.py) whether the repository
needs housekeeping; if so a separate, nice'd process (`python -m
gateway.git.housekeeping`) runs gc.py on it, one repository at a time. `gateway repo gc`
runs the same by hand, `gateway repo fsck` checks a repository (fsck.py).

The modules: lock.py (one housekeeper per repository), inventory.py (what the object
directory holds), packing.py (a new pack from stored entries, put in place crash-safely,
old packs removed), refpacking.py (loose refs into packed-refs), reachability.py (what
refs reach, what may be pruned), gc.py (the plan and its steps), faults.py (the test
seam for SIGKILL and a full disk).
"""
