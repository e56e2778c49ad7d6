"""Reserved concurrency as a floor: which reservations fit beside the unreserved pool's minimum."""

from __future__ import annotations

from lamina.invocation.reservations import Reservation, refused_reservations


def test_older_reservations_are_granted_first_and_one_that_overdraws_is_refused_with_the_figures() -> None:
    asked = [
        Reservation("ns/newest", "2026-11-30T08:00:00Z", 2),
        Reservation("ns/big", "2026-11-30T07:00:00Z", 5),
        Reservation("ns/oldest", "2026-11-30T06:00:00Z", 3),
    ]
    refused = refused_reservations(asked, limit=12, min_unreserved=4)
    # oldest (3) + big (5) = 8 = 12 - 4: granted; newest (2) would leave 2 unreserved.
    assert list(refused) == ["ns/newest"]
    assert refused["ns/newest"] == (
        "reservedConcurrency 2 refused: the unreserved pool would keep 2 of the account's 12, below its "
        "minimum of 4 (8 already reserved by older functions)"
    )


def test_a_refused_reservation_does_not_block_a_smaller_younger_one_and_zero_always_fits() -> None:
    asked = [
        Reservation("a/one", "1", 5),
        Reservation("a/two", "2", 9),  # does not fit
        Reservation("a/three", "3", 1),  # fits beside one
        Reservation("a/off", "4", 0),  # a function switched off
    ]
    assert set(refused_reservations(asked, limit=10, min_unreserved=3)) == {"a/two"}


def test_same_creation_time_is_ordered_by_key_so_gateway_and_operator_agree() -> None:
    asked = [Reservation("b/x", "t", 4), Reservation("a/x", "t", 4)]
    assert set(refused_reservations(asked, limit=10, min_unreserved=4)) == {"b/x"}
