"""The runtime image's Dockerfile builds on every base a user may give it.

The real-pod tier builds only the python3.12 image (its CPython, built from source, has pip). The
python3.11 and python3.13 bases made from Debian's ``python3`` package have no pip, so a ``pip`` in
the final stage built there and failed nowhere else; these checks keep pip in the SDK stage.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "runtime-image" / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split at each FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_the_final_stage_runs_no_pip_and_copies_the_sdk_from_the_sdk_stage() -> None:
    *builders, final = stages()
    assert builders, "the SDK needs a stage of its own, on a base that has pip"
    assert final[0].split()[1] == "${BASE}"
    runs = " ".join(line for line in final if line.upper().startswith("RUN "))
    assert not re.search(r"\bpip\b", runs), (
        f"the final stage runs pip, which a Debian python3 base lacks: {runs}"
    )
    assert any(re.match(r"COPY --from=sdk \S+ /var/runtime/vendor$", line) for line in final)


def test_the_sdk_stage_runs_on_the_builder_base_and_installs_the_pinned_sdk() -> None:
    sdk = next(stage for stage in stages() if stage[0].endswith(" AS sdk"))
    assert sdk[0].split()[1] == "${BUILDER_BASE}"
    runs = " ".join(line for line in sdk if line.upper().startswith("RUN "))
    assert "sdk.py" in runs and "--target /vendor" in runs
