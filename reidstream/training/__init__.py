"""Training as Ray Train jobs: losses, objectives, DIMN episodes, the per-worker loop, the driver.

Import from the submodules (``losses``, ``objectives``, ``episodes``, ``optim``, ``loop``,
``job``); this file stays empty so that ``reidstream.training.cli`` loads without torch or ray.
"""
