"""Git over SSH, split by direction.

- `upload/`: what serves a clone, fetch or `git archive --remote` (the object walk, the
  pack writer, the kept lists and clone cache, the stored packs' reader, the tar stream).
- `receive/`: what takes a push (the pipeline, the pack reader, the quarantine, ref
  name checks, fsck, hooks).
- `workers/`: the process that serves one request, its typed job, the pool of spare
  workers and the machine-wide slots.
- Shared by both: `handlers.py` (the service -> handler table a worker uses),
  `layout.py` (where bare repositories live on disk) and `dulwich_seam.py` (every
  private dulwich name the code relies on).
"""
