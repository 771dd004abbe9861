"""The processes that speak Git, one per request.

`job.py` is what the server hands a worker (typed, in a header on its stdin);
`worker.py` is the process (`python -m gateway.git.workers.worker`); `pool.py` keeps
spare workers started ahead of time and holds `GitWorkers`, the application's handle
on them; `slots.py` bounds how many run at once, machine-wide; `asyncio_seam.py` holds
the one private asyncio name the relay needs.
"""
