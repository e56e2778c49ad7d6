"""The Layer kind: dependencies shared by functions, kept out of their own code."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from lamina.api.common import (
    SHA256,
    URL,
    FieldError,
    LaminaModel,
    LaminaObject,
    NameRef,
    Runtime,
    S3Location,
    StatusBase,
    cel_exactly_one,
    exactly_one,
)

Requirement = str


class LayerSpec(LaminaModel):
    """Where a layer's content comes from: exactly one of url+sha256, configMap, requirements."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    **cel_exactly_one("url", "configMap", "requirements", "s3"),
                    "message": "spec: exactly one of url, configMap, requirements, s3 must be set",
                },
                {"rule": "has(self.url) == has(self.sha256)", "message": "spec: url and sha256 go together"},
            ]
        }
    )

    url: str | None = Field(default=None, pattern=URL, description="URL of a zip archive (python/ inside).")
    sha256: str | None = Field(default=None, pattern=SHA256, description="SHA-256 of the archive at url.")
    config_map: NameRef | None = Field(
        default=None, description="ConfigMap whose keys are file paths under python/."
    )
    s3: S3Location | None = Field(
        default=None, description="A zip archive (python/ inside) in S3-compatible storage."
    )
    requirements: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="pip requirement specifiers, installed once into the layer.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    compatible_runtimes: list[Runtime] = Field(
        default_factory=list,
        description="Runtimes the layer works with; empty means all.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _one_source(self) -> LayerSpec:
        exactly_one(self, "url", "config_map", "requirements", "s3")
        if self.url is not None and self.sha256 is None:
            raise FieldError("sha256", "is required with url")
        if self.url is None and self.sha256 is not None:
            raise FieldError("sha256", "only goes with url")
        for i, req in enumerate(self.requirements or []):
            if not req.strip() or req.lstrip().startswith("-"):
                raise FieldError(f"requirements[{i}]", f"must be a requirement specifier (got {req!r})")
        return self

    @property
    def kind(self) -> Literal["url", "configMap", "requirements"]:
        """Which source is set."""
        if self.url is not None:
            return "url"
        return "configMap" if self.config_map is not None else "requirements"

    def supports(self, runtime: str) -> bool:
        """Whether a function of that runtime may use this layer."""
        return not self.compatible_runtimes or runtime in self.compatible_runtimes


class LayerStatus(StatusBase):
    """The ready artifact of the current revision."""

    revision: int | None = Field(default=None, ge=0, description="Bumped whenever the content changes.")
    digest: str | None = Field(default=None, description="sha256 of the built artifact.")
    artifact: str | None = Field(default=None, description="Where the built artifact is stored.")


class Layer(LaminaObject):
    """A layer of dependencies put on the handler's import path."""

    kind: Literal["Layer"] = "Layer"
    spec: LayerSpec
    status: LayerStatus | None = None
