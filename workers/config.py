"""Configuration: one TOML file plus environment variables; secrets only from the environment.

The file is named by ``--config`` or ``DSR_CONFIG``. Any value can be overridden
from the environment as ``DSR_<SECTION>__<KEY>`` (for example
``DSR_TEMPORAL__ADDRESS``); ``DATABASE_URL`` names the orchestrator's own
database and, when absent, the embedded PostgreSQL is used.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from workflows.models import RequestKind
from workflows.tasks import RetrySettings


class TemporalSettings(BaseModel):
    """Where the Temporal service is."""

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "dsr-requests"
    ui_port: int = 8233
    tls: bool = Field(default=False, description="Connect over TLS (implied by the certificate files or an API key).")
    tls_ca_file: Path | None = Field(default=None, description="CA bundle of the server; default: the system's.")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate for mTLS (PEM).")
    tls_key_file: Path | None = Field(default=None, description="Client private key for mTLS (PEM).")
    tls_server_name: str | None = Field(default=None, description="Server name to verify, if not the address's.")
    api_key_env: str = Field(
        default="DSR_TEMPORAL_API_KEY", description="Env var holding a Temporal Cloud API key (implies TLS)."
    )
    activity_timeout_seconds: int = Field(
        default=300, ge=5, le=86400,
        description="How long a short step may run before it is retried elsewhere (a worker died holding it).",
    )
    heartbeat_timeout_seconds: int = Field(
        default=120, ge=5, le=3600,
        description="How long an export or erasure may go without a heartbeat before it is resumed elsewhere.",
    )
    ui_origins: list[str] = Field(
        default_factory=list,
        description="Origins of the Temporal Web UI allowed to call the API's codec endpoint (CORS); "
                    "empty: the dev server's UI, http://127.0.0.1:<ui_port> and http://localhost:<ui_port>.",
    )

    def allowed_ui_origins(self) -> list[str]:
        """The origins the codec endpoint answers CORS requests from."""
        return self.ui_origins or [f"http://127.0.0.1:{self.ui_port}", f"http://localhost:{self.ui_port}"]


class CodecSettings(BaseModel):
    """The AES-GCM payload codec. The key is 32 random bytes, base64, from ``key_env`` or ``key_file``."""

    key_env: str = "DSR_CODEC_KEY"
    key_file: Path | None = Field(default=None, description="Defaults to <state_dir>/codec.key.")
    data_keys: bool = Field(
        default=True,
        description="Seal each request's payloads with its own data key (needs the orchestrator database).",
    )
    shred_after_days: int | None = Field(
        default=30, ge=0, le=3650,
        description="Days after a request ends until its data key and export bundle are destroyed; "
                    "None keeps them.",
    )


class ExportSettings(BaseModel):
    """The export store: a local folder, or an S3 bucket."""

    store: Literal["local", "s3"] = "local"
    path: Path | None = Field(default=None, description="Local store folder; defaults to <state_dir>/exports.")
    bucket: str | None = None
    prefix: str = "exports/"
    endpoint_url: str | None = Field(default=None, description="For S3-compatible stores such as MinIO.")
    region: str = "us-east-1"
    link_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)


Role = Literal["portal", "admin", "privacy_officer", "auditor"]
"""Who a caller is: portal and admin act for one tenant; privacy_officer and auditor read every tenant's."""
TENANT_BOUND_ROLES: frozenset[str] = frozenset({"portal", "admin"})
"""Roles that must name their tenant (a privacy officer or auditor may, to be limited to one)."""


class ApiToken(BaseModel):
    """A bearer token: only its SHA-256 is configured, never the token."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Role
    tenant: str | None = Field(
        default=None,
        description="Required for portal and admin; absent for a privacy officer or auditor of all tenants.",
    )

    @model_validator(mode="after")
    def _tenant_for_bound_roles(self) -> ApiToken:
        if self.role in TENANT_BOUND_ROLES and not self.tenant:
            raise ValueError(f"a token with role {self.role} must name its tenant")
        return self


class OidcSettings(BaseModel):
    """OpenID Connect: bearer JWTs from an identity provider, verified against its JWKS."""

    issuer: str = Field(description="The ``iss`` every token must carry.")
    audience: str = Field(description="The ``aud`` every token must carry (this API's client id).")
    jwks_url: str = Field(description="Where the provider publishes its signing keys (JWKS).")
    role_claim: str = Field(default="dsr_role", description="The claim holding the role.")
    tenant_claim: str = Field(default="dsr_tenant", description="The claim holding the tenant (portal, admin).")
    actor_claim: str = Field(default="sub", description="The claim naming the caller in audit records.")
    algorithms: list[Literal["RS256", "ES256"]] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat.")
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    jwks_cache_seconds: int = Field(default=600, ge=0, description="How long fetched keys are used without refetching.")
    jwks_min_refetch_seconds: float = Field(
        default=30.0, ge=0, description="At most one refetch per this interval for tokens with an unknown ``kid``."
    )


class ConsoleOidcSettings(BaseModel):
    """The admin console's sign-in through the identity provider: authorization code with PKCE (RFC 7636).

    The console is a client of the provider with ``api.oidc.audience`` as its client id, so that its ID
    tokens are verified like the API's bearer JWTs (issuer, audience, JWKS, role and tenant claims).
    Its redirect URI is ``<api.public_url>/admin/oidc/callback``.
    """

    authorization_endpoint: str = Field(description="The provider's authorization endpoint (https).")
    token_endpoint: str = Field(description="The provider's token endpoint (https).")
    client_secret_env: str | None = Field(
        default=None, description="Env var with the client secret, for a confidential client; none for a public one.")
    scopes: list[str] = Field(default_factory=lambda: ["openid"], description="Scopes asked for; openid is added.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=60, description="For the token endpoint.")


class ApiSettings(BaseModel):
    """The HTTP API."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = Field(default="http://127.0.0.1:8080", description="Base URL in links sent to subjects.")
    tokens: list[ApiToken] = Field(default_factory=list)
    oidc: OidcSettings | None = Field(default=None, description="Accept JWTs from an identity provider too.")
    console_oidc: ConsoleOidcSettings | None = Field(
        default=None, description="Let the admin console sign in through the identity provider (needs ``oidc``).")
    secret_env: str = Field(
        default="DSR_API_SECRET",
        description="Env var with the secret behind idempotent request ids; the codec key when unset.",
    )


class TenantSettings(BaseModel):
    """One organisation's policy (privacy policy 7.1)."""

    approval_required: list[RequestKind] = Field(
        default_factory=lambda: [RequestKind.ACCESS, RequestKind.EXPORT, RequestKind.ERASURE]
    )
    organisation_managed: bool = Field(default=False, description="Accounts are managed by the organisation.")
    objection_window_days: int = Field(default=7, ge=0, le=60, description="Admin objection window (restriction).")
    reminder_every_days: int = Field(default=3, ge=1, le=30)
    escalate_days_before_due: int = Field(default=7, ge=0, le=60)
    verification_timeout_days: int = Field(default=14, ge=1, le=60)
    dispute_notice_days: int = Field(default=14, ge=0, le=90, description="Notice before lifting a restriction.")
    admin_email: str | None = Field(default=None, description="Where admin reminders go.")
    privacy_office_email: str | None = Field(default=None, description="Where escalations go.")


class NotifySettings(BaseModel):
    """Notifications by email (SMTP); secrets (SMTP credentials, the outbox hash key) only from the environment."""

    enabled: bool = Field(default=True, description="False records every notification as skipped (no mail server).")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, gt=0, lt=65536)
    use_tls: bool = Field(default=False, description="Implicit TLS from the first byte (port 465).")
    start_tls: bool = Field(default=False, description="Upgrade with STARTTLS (port 587).")
    timeout_seconds: float = Field(default=30.0, gt=0)
    username_env: str = Field(default="DSR_SMTP_USERNAME", description="Env var with the SMTP user; no login if unset.")
    password_env: str = Field(default="DSR_SMTP_PASSWORD", description="Env var with the SMTP password.")
    sender: str = "privacy@example.com"
    privacy_office_email: str | None = Field(default=None, description="Escalations when the tenant names none.")
    hash_key_env: str = Field(
        default="DSR_NOTIFY_HASH_KEY",
        description="Env var with the key of the outbox's recipient hashes; derived from the codec key when unset.",
    )


class MetricsSettings(BaseModel):
    """Prometheus metrics (README "Observability"). No label carries personal data or an unbounded value."""

    host: str = Field(
        default="127.0.0.1", description="Where this process's metrics ports listen (0.0.0.0 in a container).")
    worker_port: int | None = Field(
        default=None, gt=0, lt=65536, description="The worker serves GET /metrics (ours) here; off when unset.")
    temporal_port: int | None = Field(
        default=None, gt=0, lt=65536,
        description="The Temporal SDK's own Prometheus endpoint in this process; off when unset (one per process).")
    api_route: bool = Field(default=True, description="The API serves GET /metrics (no token) on its own port.")
    deadline_refresh_seconds: int = Field(
        default=60, ge=0, le=3600,
        description="How often the worker counts open requests by days to deadline (visibility); 0 turns it off.")


class TracingSettings(BaseModel):
    """OpenTelemetry tracing through Temporal's TracingInterceptor; off unless an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; off when unset.")
    service_name: str = Field(default="dsr-orchestrator", description="The resource's service.name.")


class WorkerSettings(BaseModel):
    """How much one worker process takes on at once (README, Performance: size it to the worker's memory)."""

    max_cached_workflows: int = Field(
        default=1000, ge=0,
        description="Workflows kept in memory between their tasks (about 0.5 MB each); the others are replayed "
                    "from their history when they next have work. 0: none kept.")
    max_concurrent_activities: int = Field(
        default=50, ge=1, description="Activities (connector calls, exports, erasures) this worker runs at once.")
    max_concurrent_workflow_tasks: int = Field(
        default=100, ge=1, description="Workflow tasks this worker runs at once.")


class SystemSettings(BaseModel):
    """One configured system. ``type`` picks the connector; other keys are the connector's options."""

    model_config = ConfigDict(extra="allow")

    type: str
    tenants: list[str] | None = Field(default=None, description="Tenants this system serves; all when absent.")
    retry: RetrySettings | None = Field(default=None, description="This system's own retry policy.")

    def options(self) -> dict[str, Any]:
        """The connector's own options (everything but ``type``, ``tenants`` and ``retry``)."""
        return dict(self.model_extra or {})


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(env_prefix="DSR_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Path(".dsr")
    database_url: str | None = Field(default=None, description="Orchestrator database; DATABASE_URL wins.")
    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    codec: CodecSettings = Field(default_factory=CodecSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    systems: dict[str, SystemSettings] = Field(default_factory=dict)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    _toml: dict[str, Any] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; the file arrives as init kwargs.
        return (env_settings, init_settings)

    @property
    def export_path(self) -> Path:
        """The local export folder."""
        return self.export.path or self.state_dir / "exports"

    @property
    def codec_key_file(self) -> Path:
        """Where the codec key is kept when it does not come from the environment."""
        return self.codec.key_file or self.state_dir / "codec.key"

    def orchestrator_database_url(self) -> str | None:
        """``DATABASE_URL`` if set, else the configured one, else None (embedded)."""
        return os.environ.get("DATABASE_URL") or self.database_url

    def systems_for(self, tenant: str) -> dict[str, SystemSettings]:
        """The systems that serve ``tenant``, in configuration order."""
        return {n: s for n, s in self.systems.items() if s.tenants is None or tenant in s.tenants}

    def tenant(self, tenant: str) -> TenantSettings | None:
        """The tenant's policy, or None for an unknown tenant."""
        return self.tenants.get(tenant)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the TOML file (``path``, else ``DSR_CONFIG``, else none) and the environment.

    Relative paths in the file are resolved against the file's folder.
    """
    path = path or os.environ.get("DSR_CONFIG")
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        base = p.resolve().parent
        if "state_dir" in data:
            data["state_dir"] = str((base / data["state_dir"]).resolve())
        for system in data.get("systems", {}).values():
            for key in ("dataset", "policy_file"):
                if key in system and not Path(system[key]).is_absolute():
                    system[key] = str(base / system[key])
        export = data.get("export", {})
        if "path" in export:
            export["path"] = str(base / export["path"])
        temporal = data.get("temporal", {})
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if key in temporal and not Path(temporal[key]).is_absolute():
                temporal[key] = str(base / temporal[key])
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"configuration invalid at {where}: {first['msg']}") from exc
