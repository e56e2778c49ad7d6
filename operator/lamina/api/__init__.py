"""The lamina custom resources as pydantic models: one source of truth for code, CRDs and errors."""

from lamina.api.common import (
    API_VERSION,
    GROUP,
    RUNTIMES,
    VERSION,
    Condition,
    Endpoint,
    KeyRef,
    LaminaObject,
    NameRef,
    ObjectMeta,
)
from lamina.api.errors import ManifestError
from lamina.api.eventsourcemapping import (
    EventSource,
    EventSourceMapping,
    EventSourceMappingSpec,
    EventSourceMappingStatus,
    ScheduleSource,
)
from lamina.api.function import (
    ALIAS_VERSIONS_EXIST,
    AliasSpec,
    AliasStatus,
    AsyncConfig,
    CodeSource,
    EnvFrom,
    Function,
    FunctionSpec,
    FunctionStatus,
    HttpConfig,
    PublishedVersion,
)
from lamina.api.layer import Layer, LayerSpec, LayerStatus
from lamina.api.manifests import Manifests, load_documents, load_manifests, parse_object
from lamina.api.references import reference_problems

__all__ = [
    "ALIAS_VERSIONS_EXIST",
    "API_VERSION",
    "GROUP",
    "RUNTIMES",
    "VERSION",
    "AliasSpec",
    "AliasStatus",
    "AsyncConfig",
    "CodeSource",
    "Condition",
    "Endpoint",
    "EnvFrom",
    "EventSource",
    "EventSourceMapping",
    "EventSourceMappingSpec",
    "EventSourceMappingStatus",
    "Function",
    "FunctionSpec",
    "FunctionStatus",
    "HttpConfig",
    "KeyRef",
    "LaminaObject",
    "Layer",
    "LayerSpec",
    "LayerStatus",
    "ManifestError",
    "Manifests",
    "NameRef",
    "ObjectMeta",
    "PublishedVersion",
    "ScheduleSource",
    "load_documents",
    "load_manifests",
    "parse_object",
    "reference_problems",
]
