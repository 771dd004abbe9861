"""Serving clones, fetches and archives (git-upload-pack, git-upload-archive).

`upload_pack.py` is the handler (dulwich's negotiation, then our pack), its refs listed
by `refs.py` (with `packedrefs.py`, `refnames.py`, `objectindex.py`); `walk.py`
chooses the objects to send and `packwriter.py` writes the pack from the stored packs'
bytes (`storedpacks.py`), helped by each commit's kept object list (`commitobjects.py`),
the last clone's list (`clonecache.py`) and C git's bitmaps (`bitmaps.py`).
`upload_archive.py` and `archive.py` serve `git archive --remote`.
"""
