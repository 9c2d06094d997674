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

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from workflows.models import RequestKind
from workflows.tasks import RetrySettings


class TemporalSettings(BaseModel):
    """Where the Temporal service is."""

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "dsr-requests"
    ui_port: int = 8233


class CodecSettings(BaseModel):
    """The AES-GCM payload codec. The key is 32 random bytes, base64, from ``key_env`` or ``key_file``."""

    key_env: str = "DSR_CODEC_KEY"
    key_file: Path | None = Field(default=None, description="Defaults to <state_dir>/codec.key.")


class ExportSettings(BaseModel):
    """The export store: a local folder, or an S3 bucket."""

    store: Literal["local", "s3"] = "local"
    path: Path | None = Field(default=None, description="Local store folder; defaults to <state_dir>/exports.")
    bucket: str | None = None
    prefix: str = "exports/"
    endpoint_url: str | None = Field(default=None, description="For S3-compatible stores such as MinIO.")
    region: str = "us-east-1"
    link_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)


class ApiToken(BaseModel):
    """A bearer token: only its SHA-256 is configured, never the token."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["portal", "admin"]
    tenant: str


class ApiSettings(BaseModel):
    """The HTTP API."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = Field(default="http://127.0.0.1:8080", description="Base URL in links sent to subjects.")
    tokens: list[ApiToken] = Field(default_factory=list)
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
    codec: CodecSettings = Field(default_factory=CodecSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    systems: dict[str, SystemSettings] = Field(default_factory=dict)
    notify: NotifySettings = Field(default_factory=NotifySettings)

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
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"configuration invalid at {where}: {first['msg']}") from exc
