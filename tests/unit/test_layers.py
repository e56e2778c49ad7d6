"""The package order is declared once for the tools (pyproject.toml's `layers` contract, checked by
lint-imports) and once for people (docs/architecture.md, "Layers"): every package has a place in
both, and both say the same thing."""

from __future__ import annotations

import pkgutil
import re
import tomllib

import lamina
from tests.support.local_mode import REPO

CONTRACT = "Packages import only downwards"


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    [layers] = [c["layers"] for c in contracts if c["name"].startswith(CONTRACT)]
    return [[name.strip() for name in re.split(r"[|:]", layer)] for layer in layers]


def doc_layers() -> list[list[str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("### Layers", 1)[1].split("```", 2)[1]
    return [[name.strip() for name in line.split("|")] for line in block.strip().splitlines()]


def test_every_package_of_lamina_has_a_layer() -> None:
    placed = {name for layer in contract_layers() for name in layer}
    modules = {f"lamina.{m.name}" for m in pkgutil.iter_modules(lamina.__path__)}
    missing = sorted(modules - placed)
    assert not missing, (
        f"{', '.join(missing)} is in no layer of the '{CONTRACT}' contract in pyproject.toml, so nothing "
        "checks what it imports: add it to the layer it belongs to (the lowest one that has everything "
        "it imports below it), and to the Layers block of docs/architecture.md"
    )
    gone = sorted(name for name in placed - modules if name.startswith("lamina."))
    assert not gone, f"the '{CONTRACT}' contract names packages that do not exist: {', '.join(gone)}"


def test_the_documented_order_is_the_enforced_one() -> None:
    enforced = [[name.removeprefix("lamina.") for name in layer] for layer in contract_layers()]
    assert doc_layers() == enforced, (
        "docs/architecture.md's Layers block and pyproject.toml's layers contract differ; change both"
    )
