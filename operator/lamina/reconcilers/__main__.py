"""``python -m lamina.reconcilers [args]``: the same as ``lamina operator [args]``."""

import sys

from lamina.reconcilers.main import run_operator

sys.exit(run_operator(sys.argv[1:]))
