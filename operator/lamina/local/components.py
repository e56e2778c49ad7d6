"""Optional local-mode components (async queue, event source mappings, schedules)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.local.runner import LocalStack


def build_components(stack: LocalStack) -> list[Any]:
    return []
