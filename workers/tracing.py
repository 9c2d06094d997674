"""OpenTelemetry tracing through Temporal's ``TracingInterceptor``, when ``[tracing] otlp_endpoint`` is set.

Off by default, and then nothing of OpenTelemetry is imported. On, spans go over OTLP/HTTP (the ``tracing``
extra: ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``). The interceptor sits on the
Temporal client, so the API's calls (``StartWorkflow:...``, updates, signals) and the worker built on that
client (``RunWorkflow:...``, ``StartActivity:...``, ``RunActivity:...``) join one trace per request. Spans
carry Temporal's workflow and activity ids only: no payload, no subject identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.config import ConfigError, Settings

if TYPE_CHECKING:
    from temporalio.client import Interceptor

__all__ = ["client_interceptors", "tracing_interceptor"]

_providers: dict[tuple[str, str], Any] = {}


def tracing_interceptor(tracer: Any = None) -> Interceptor:
    """Temporal's tracing interceptor on ``tracer`` (an ``opentelemetry.trace.Tracer``; default: the global one)."""
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(tracer)


def _otlp_provider(endpoint: str, service_name: str) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"tracing.otlp_endpoint is set but OpenTelemetry's SDK or OTLP exporter is missing ({exc.name}): "
            "pip install 'dsr-orchestrator[tracing]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def client_interceptors(settings: Settings) -> list[Interceptor]:
    """The client interceptors ``[tracing]`` asks for: none when no endpoint is configured.

    Raises:
        ConfigError: An endpoint is configured but the ``tracing`` extra is not installed.
    """
    endpoint = settings.tracing.otlp_endpoint
    if not endpoint:
        return []
    key = (endpoint, settings.tracing.service_name)
    if key not in _providers:  # one exporter per process, whatever the number of clients
        _providers[key] = _otlp_provider(endpoint, settings.tracing.service_name)
    return [tracing_interceptor(_providers[key].get_tracer("dsr-orchestrator"))]
