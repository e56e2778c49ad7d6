"""Status is written through the status models: a misspelt key fails here, not silently in the API
server; the blocking reasons are the BlockReason enum."""

from __future__ import annotations

import pytest

from lamina.reconcilers.status import (
    BLOCKING_REASONS,
    BlockReason,
    StatusFieldError,
    check_status,
    set_condition,
)


def test_the_blocking_reasons_are_the_enum() -> None:
    assert {str(r) for r in BlockReason} == BLOCKING_REASONS
    assert "LayerNotFound" in BLOCKING_REASONS and BlockReason("LayerNotFound") is BlockReason.LAYER_NOT_FOUND
    assert "Deploying" not in BLOCKING_REASONS  # progress is not a block


def test_what_the_reconcilers_write_passes() -> None:
    conditions = set_condition(
        None, "Ready", False, BlockReason.SECRET_NOT_FOUND, "Secret s does not exist", 3
    )
    check_status(
        "Function",
        {
            "readyEnvironments": 1,
            "desiredEnvironments": 2,
            "layerRevisions": {"deps": 4},
            "codeDigest": "ab" * 32,
            "url": "http://gw/url/ns.fn",
            "observedGeneration": 3,
            "conditions": conditions,
        },
    )
    check_status(
        "Layer", {"revision": 2, "digest": "d", "artifact": "configmap://x", "conditions": conditions}
    )
    check_status("EventSourceMapping", {"state": "Enabled", "source": "redis s", "nextFireTime": None})
    # A merge patch deletes with null, at any depth (an alias that is gone).
    check_status("Function", {"aliases": {"old": None}, "codeS3": None})


@pytest.mark.parametrize(
    ("kind", "fields", "named"),
    [
        ("Function", {"readyEnviroments": 1}, "readyEnviroments"),
        ("Function", {"ready_environments": 1}, "ready_environments"),  # python name, not the wire name
        ("Layer", {"revison": 2}, "revison"),
        ("EventSourceMapping", {"lastProcesingResult": "OK"}, "lastProcesingResult"),
        ("Function", {"conditions": [{"type": "Ready", "status": "True", "reson": "x"}]}, "reson"),
    ],
)
def test_a_misspelt_key_is_refused_naming_it(kind: str, fields: dict, named: str) -> None:
    with pytest.raises(StatusFieldError, match=named):
        check_status(kind, fields)


def test_a_value_the_model_refuses_is_refused() -> None:
    with pytest.raises(StatusFieldError, match="readyEnvironments"):
        check_status("Function", {"readyEnvironments": -1})
