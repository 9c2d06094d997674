"""Options of a ``type = "s3_backups"`` system (:class:`BackupsConfig`), for :mod:`connectors.backups`.

The bucket and prefix of the backups, their retention, whether expired ones are deleted,
since when backups can hold a subject's data (a date means midnight UTC, a naive time is
taken as UTC), and the optional environment variables holding explicit S3 credentials
(:meth:`BackupsConfig.credentials`). A full example is in :mod:`connectors.backups`.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.contract import ConfigurationError


class BackupsConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "s3_backups"``."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(min_length=1, description="The bucket holding the backups.")
    prefix: str = Field(default="", description="Key prefix of the backups, e.g. 'nightly/'.")
    endpoint_url: str | None = Field(default=None, description="For S3-compatible stores (MinIO, moto).")
    region: str = Field(default="us-east-1", description="The bucket's region.")
    retention_days: int = Field(ge=1, le=36_500, description="A backup expires LastModified + this many days.")
    delete_expired: bool = Field(
        default=False, description="Delete affected backups that outlived their retention (else wait for them)."
    )
    covers_since: datetime | None = Field(
        default=None, description="Backups taken before this cannot hold the subject's data; all when absent."
    )
    access_key_id_env: str | None = Field(default=None, description="Env var with the access key id.")
    secret_access_key_env: str | None = Field(default=None, description="Env var with the secret access key.")

    @field_validator("covers_since", mode="before")
    @classmethod
    def _date(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        return value

    @field_validator("covers_since")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    def credentials(self) -> dict[str, str]:
        """Explicit credentials from the environment, or none (boto3's credential chain then applies).

        Raises:
            ConfigurationError: A named variable is not set, or only one of the pair is named.
        """
        names = (self.access_key_id_env, self.secret_access_key_env)
        if not any(names):
            return {}
        if not all(names):
            raise ConfigurationError("set both access_key_id_env and secret_access_key_env, or neither")
        values = {}
        for option, env, arg in (("access_key_id_env", names[0], "aws_access_key_id"),
                                 ("secret_access_key_env", names[1], "aws_secret_access_key")):
            value = os.environ.get(env or "")
            if not value:
                raise ConfigurationError(f"environment variable {env} ({option}) is not set")
            values[arg] = value
        return values
