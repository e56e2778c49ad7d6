"""``python -m lamina.crdgen``."""

import sys

from lamina.crdgen import main

sys.exit(main())
