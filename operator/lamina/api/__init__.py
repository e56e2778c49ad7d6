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
    AsyncConfig,
    CodeSource,
    EnvFrom,
    Function,
    FunctionSpec,
    FunctionStatus,
    HttpConfig,
)
from lamina.api.layer import Layer, LayerSpec, LayerStatus
from lamina.api.manifests import Manifests, load_documents, load_manifests, parse_object
from lamina.api.references import reference_problems

__all__ = [
    "API_VERSION",
    "GROUP",
    "RUNTIMES",
    "VERSION",
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
    "ScheduleSource",
    "load_documents",
    "load_manifests",
    "parse_object",
    "reference_problems",
]
