"""The event loop every gateway runs on (local mode's and the cluster's)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_async(main: Coroutine[Any, Any, Any]) -> int:
    """asyncio.run on uvloop when it is installed: the gateway's transports then cost about half."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(main))
    return int(uvloop.run(main))
