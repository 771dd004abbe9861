"""The processes that speak Git, one per request.

`job.py` is what the server hands a worker (typed, in a header on its stdin);
`worker.py` is the process (`python -m gateway.git.workers.worker`); `zygote.py` is the
process that has done a worker's imports and forks one per job, `forked.py` the
server's side of it; `pool.py` chooses between a forked worker and a fresh Python and
holds `GitWorkers`, the application's handle on them; `slots.py` bounds how many run at
once, machine-wide; `asyncio_seam.py` holds the one private asyncio name the relay needs.
"""
