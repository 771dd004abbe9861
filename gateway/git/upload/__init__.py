"""Serving clones, fetches and archives (git-upload-pack, git-upload-archive).

`upload_pack.py` is the handler (dulwich's negotiation, then our pack); `packwriter.py`
walks the objects to send and writes the pack from the stored packs' bytes
(`storedpacks.py`), helped by each commit's kept object list (`commitobjects.py`) and
the last clone's list (`clonecache.py`). `upload_archive.py` and `archive.py` serve
`git archive --remote`.
"""
