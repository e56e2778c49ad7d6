"""Reserved concurrency as a floor: what one function reserves is withheld from the unreserved pool.

As on Lambda, the account's concurrency (the gateway's ``--concurrency-limit``, the chart's
``concurrency.limit``) is shared by every function without a reservation, less what the others
reserve; a reservation that would leave that unreserved pool below its minimum (Lambda's 100, the
chart's ``concurrency.minUnreserved``) is refused. Lambda refuses it when PutFunctionConcurrency is
called; here a reservation is part of a Function applied to the cluster, so the one that does not fit
is refused where it is used: the gateway serves that function as unreserved, and the operator writes
why into its status. Both decide with this one function, in the same order (oldest Function first,
then by namespace and name), so they agree without talking to each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Lambda's smallest unreserved pool: reservations may take the rest of the account's concurrency.
DEFAULT_MIN_UNRESERVED = 100


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str  # namespace/name
    created: str  # the Function's creationTimestamp (RFC 3339: sorts as text)
    amount: int


def refused_reservations(
    reservations: Iterable[Reservation], limit: int, min_unreserved: int = DEFAULT_MIN_UNRESERVED
) -> dict[str, str]:
    """The reservations that do not fit, by key, each with the reason; oldest first are granted."""
    available = max(limit - min_unreserved, 0)
    granted = 0
    refused: dict[str, str] = {}
    for r in sorted(reservations, key=lambda r: (r.created, r.key)):
        if granted + r.amount <= available:
            granted += r.amount
            continue
        refused[r.key] = (
            f"reservedConcurrency {r.amount} refused: the unreserved pool would keep "
            f"{limit - granted - r.amount} of the account's {limit}, below its minimum of {min_unreserved} "
            f"({granted} already reserved by older functions)"
        )
    return refused
