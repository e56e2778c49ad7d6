"""kopf handlers: read an object, call a pure builder (lamina.resources), apply, write status.

Start it with ``lamina operator`` (or ``python -m lamina.reconcilers``); see :func:`main.run_operator`.
"""
