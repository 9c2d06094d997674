"""The backup-store connector: backups are objects under a prefix of an S3 bucket, kept for a retention period.

A backup cannot be edited, so an erasure does what the UK regulator's guidance asks of backups: the live data
is erased elsewhere, and here

1. an entry goes to the orchestrator's erasure ledger (the ``erasure_ledger`` service, attached before ``open``),
   holding only keyed hashes of the subject's identifiers, so that ``dsr backups reapply`` can erase the subject
   again from a database restored out of one of these backups;
2. every backup that may hold the subject's data is tagged ``dsr-beyond-use=true`` and ``dsr-erasure=<request>``
   (merged into its other tags), so that nobody restores it into use unknowingly; backups that already outlived
   their retention are deleted instead when ``delete_expired`` allows it;
3. the outcome's ``completes_at`` is when the newest of the tagged backups expires: the orchestrator waits until
   then (a child workflow) and calls :meth:`BackupsConnector.verify_erasure`, which checks that they are gone,
   deleting those that outlived their retention when ``delete_expired`` allows it.

Which backups "may hold" the data is kept simple: every object under the prefix (taken at or after
``covers_since`` when set) that still exists. A backup expires at its ``LastModified`` plus ``retention_days``.
The affected backups are kept in the orchestrator's :class:`PlanStore` (object key and the time it was taken),
so a second erasure tags nothing more and reports the same counts, and a backup later overwritten under the
same key (a newer dump, taken after the erasure) is not mistaken for the affected one.

A full example::

    [systems.backups]
    type = "s3_backups"
    bucket = "db-backups"
    prefix = "nightly/"
    retention_days = 35
    delete_expired = true                         # delete backups past retention when verifying
    # endpoint_url = "http://127.0.0.1:9000"      # MinIO or moto
    # region = "eu-west-1"
    # covers_since = 2021-03-01                   # backups older than this cannot hold the subject's data
    # access_key_id_env = "BACKUPS_AWS_ACCESS_KEY_ID"          # else boto3's usual credential chain
    # secret_access_key_env = "BACKUPS_AWS_SECRET_ACCESS_KEY"

Not handled: versioned buckets (a deleted object's older versions stay; keep versioning off for backup
prefixes, or expire non-current versions with a lifecycle rule) and S3 Object Lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from connectors.backups_config import BackupsConfig
from connectors.contract import (
    Capability,
    ConfigurationError,
    Connector,
    ConnectorError,
    ErasureOutcome,
    ExportOutcome,
    ExportSink,
    LocateOutcome,
    PlanItem,
    PlanStore,
    ProgressReporter,
    RetainedItem,
    Subject,
    VerificationOutcome,
)

COLLECTION = "backups"
GROUND = "backup copies put beyond use; deleted when they expire"
BEYOND_USE_TAG = "dsr-beyond-use"
ERASURE_TAG = "dsr-erasure"
MAX_TAGS = 10  # S3's limit per object
_BATCH = 100
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_BAD_CONFIG = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
               "InvalidBucketName", "PermanentRedirect", "AuthorizationHeaderMalformed", "403"}


class ErasureLedger(Protocol):
    """The orchestrator's erasure ledger, as the connector uses it (see ``activities.ledger``)."""

    async def record(self, request_id: str, system: str, identities: dict[str, str]) -> None:
        """Record that the subject was erased; only keyed hashes of ``identities`` are stored."""


@dataclass(frozen=True)
class Backup:
    """One backup object: its key, when it was taken, when it expires."""

    key: str
    taken_at: datetime
    expires_at: datetime

    def row(self) -> dict[str, str]:
        """The export row (no contents: the backup is not read)."""
        return {"key": self.key, "taken_at": self.taken_at.isoformat(), "expires_at": self.expires_at.isoformat()}


def _utc(value: datetime) -> datetime:
    """UTC, to the second: listings give milliseconds, HEAD's Last-Modified header whole seconds."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=0)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class BackupsConnector(Connector):
    """Backups in an S3 bucket (or MinIO): reported, put beyond use, and checked gone once they expire."""

    type_name = "s3_backups"
    capabilities = frozenset({Capability.LOCATE, Capability.EXPORT, Capability.ERASE})

    def __init__(self, name: str, config: BackupsConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        """Keep the options (no connection yet); ``clock`` gives the current time (tests move it)."""
        super().__init__(name)
        self.config = config
        self.retention = timedelta(days=config.retention_days)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._ledger: ErasureLedger | None = None
        self._client: Any = None

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> BackupsConnector:
        """Build from the options of ``[systems.<name>]``.

        Raises:
            ConfigurationError: One line saying what is wrong with the options.
        """
        try:
            config = BackupsConfig.model_validate(dict(options))
            config.credentials()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "options"
            raise ConfigurationError(f"systems.{name}: {where}: {err['msg']}") from None
        except ConfigurationError as exc:
            raise ConfigurationError(f"systems.{name}: {exc}") from None
        return cls(name, config)

    def attach(self, services: Mapping[str, Any]) -> None:
        """Take the orchestrator's ``erasure_ledger``; erasure refuses to run without it."""
        self._ledger = services.get("erasure_ledger", self._ledger)

    async def open(self) -> None:
        """Create the S3 client and check that the bucket answers."""
        if self._client is not None:
            return
        import boto3  # heavy: imported when a backup store is opened, not when this module is
        from botocore.config import Config

        cfg = self.config
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
            config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=60),
            **cfg.credentials(),
        )
        try:
            await self._s3("open", "head_bucket", Bucket=cfg.bucket)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    # --- S3 calls ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, op: str) -> Iterator[None]:
        """Turn botocore's errors into connector errors that say whether a retry can help (no keys, no data)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            yield
        except ClientError as exc:
            code = _error_code(exc)
            where = f"{self.name}: {op}: S3 error {code or 'unknown'} (bucket {self.config.bucket})"
            if code in _BAD_CONFIG or (op == "open" and code in _NOT_FOUND):  # HEAD bucket: a bare 404
                raise ConfigurationError(where) from None
            raise ConnectorError(where) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigurationError(f"{self.name}: {op}: no S3 credentials found") from None
        except BotoCoreError as exc:
            raise ConnectorError(f"{self.name}: {op}: {type(exc).__name__}") from None

    async def _s3(self, op: str, method: str, **kwargs: Any) -> Any:
        if self._client is None:
            raise ConnectorError(f"{self.name}: call open() first", retryable=False)
        with self._errors(op):
            return await asyncio.to_thread(getattr(self._client, method), **kwargs)

    async def _head(self, op: str, key: str) -> datetime | None:
        """When the object under ``key`` was taken, or None when there is none."""
        from botocore.exceptions import ClientError

        if self._client is None:
            raise ConnectorError(f"{self.name}: call open() first", retryable=False)
        try:
            head = await asyncio.to_thread(self._client.head_object, Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                return None
            with self._errors(op):
                raise
        return _utc(head["LastModified"])

    def _backup(self, key: str, taken_at: datetime) -> Backup:
        return Backup(key=key, taken_at=taken_at, expires_at=taken_at + self.retention)

    async def backups(self) -> list[Backup]:
        """Every backup under the prefix that may hold a subject's data, oldest first."""
        def scan() -> list[Backup]:
            out = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=self.config.prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    taken = _utc(obj["LastModified"])
                    if obj["Key"].endswith("/") or (self.config.covers_since and taken < self.config.covers_since):
                        continue
                    out.append(self._backup(obj["Key"], taken))
            return sorted(out, key=lambda b: (b.taken_at, b.key))

        if self._client is None:
            raise ConnectorError(f"{self.name}: call open() first", retryable=False)
        with self._errors("list"):
            return await asyncio.to_thread(scan)

    async def _still_there(self, op: str, backup: Backup) -> bool:
        """Whether the very backup (not a newer one written under its key since) still exists."""
        return await self._head(op, backup.key) == backup.taken_at

    async def _tag(self, backup: Backup, request_id: str) -> bool:
        """Tag the backup beyond use for ``request_id``, keeping its other tags; False if it is gone."""
        if not await self._still_there("tag", backup):
            return False
        bucket = self.config.bucket
        current = await self._s3("tag", "get_object_tagging", Bucket=bucket, Key=backup.key)
        tags = {t["Key"]: t["Value"] for t in current.get("TagSet", ())}
        tags.update({BEYOND_USE_TAG: "true", ERASURE_TAG: request_id})
        if len(tags) > MAX_TAGS:
            raise ConnectorError(f"{self.name}: a backup has too many tags to add {BEYOND_USE_TAG} "
                                 f"(S3 allows {MAX_TAGS} per object)", retryable=False)
        await self._s3("tag", "put_object_tagging", Bucket=bucket, Key=backup.key,
                       Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
        return True

    async def _delete(self, op: str, backup: Backup) -> None:
        if await self._still_there(op, backup):
            await self._s3(op, "delete_object", Bucket=self.config.bucket, Key=backup.key)

    # --- rights -------------------------------------------------------------------------------

    async def locate(self, subject: Subject) -> LocateOutcome:
        """How many backups may hold the subject's data (every backup still there)."""
        n = len(await self.backups())
        return LocateOutcome(found={COLLECTION: n} if n else {})

    async def export(self, subject: Subject, sink: ExportSink) -> ExportOutcome:
        """One collection ``backups``: each backup's key, when it was taken and when it expires (no contents)."""
        found = await self.backups()
        if not found:
            return ExportOutcome()
        async with sink.collection(COLLECTION, ["key", "taken_at", "expires_at"]) as writer:
            for backup in found:
                await writer.write(backup.row())
        return ExportOutcome(exported={COLLECTION: len(found)})

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Record the ledger entry, then put every affected backup beyond use (or delete it if expired).

        The affected backups are planned once (``retain``: tag and wait; ``delete``: already past retention and
        ``delete_expired``); a second run applies only what the first did not and reports the same outcome.

        Raises:
            ConnectorError: No erasure ledger is attached (not retryable), or S3 failed.
        """
        if self._ledger is None:
            raise ConnectorError(f"{self.name}: no erasure ledger attached; the orchestrator must attach "
                                 "'erasure_ledger' before open()", retryable=False)
        await self._ledger.record(subject.request_id, self.name, dict(subject.identities))
        if not await plan.has_plan():
            now = self.clock()
            items = [self._plan_item(b, now) for b in await self.backups()]
            for start in range(0, len(items), _BATCH):
                await plan.save(items[start:start + _BATCH])
            await plan.seal()
            progress({"planned": len(items)})
        tagged = deleted = 0
        async for batch in plan.pending(_BATCH):
            for _, item in batch:
                backup = self._from_item(item)
                if item.action == "delete":
                    await self._delete("erase", backup)
                    deleted += 1
                elif await self._tag(backup, subject.request_id):
                    tagged += 1
            await plan.mark_done([item_id for item_id, _ in batch])
            progress({"tagged": tagged, "deleted": deleted})
        return await self._outcome(plan)

    def _plan_item(self, backup: Backup, now: datetime) -> PlanItem:
        expired = backup.expires_at <= now
        if expired and self.config.delete_expired:
            return PlanItem(collection=COLLECTION, key=self._key(backup), action="delete")
        return PlanItem(collection=COLLECTION, key=self._key(backup), action="retain", ground=GROUND)

    @staticmethod
    def _key(backup: Backup) -> dict[str, str]:
        return {"key": backup.key, "taken_at": backup.taken_at.isoformat()}

    def _from_item(self, item: PlanItem) -> Backup:
        return self._backup(str(item.key["key"]), _utc(datetime.fromisoformat(str(item.key["taken_at"]))))

    async def _outcome(self, plan: PlanStore) -> ErasureOutcome:
        retained, deleted, completes_at = 0, 0, None
        async for item in plan.items():
            if item.action == "delete":
                deleted += 1
                continue
            retained += 1
            expires = self._from_item(item).expires_at
            completes_at = expires if completes_at is None else max(completes_at, expires)
        return ErasureOutcome(
            deleted={COLLECTION: deleted} if deleted else {},
            retained=[RetainedItem(collection=COLLECTION, count=retained, ground=GROUND)] if retained else [],
            completes_at=completes_at,
        )

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Check that the affected backups are gone; delete those past retention when ``delete_expired``.

        Remaining: affected backups still there (not yet expired, or expired but not deletable by policy).
        Called by the orchestrator after the erasure's ``completes_at``; earlier, the unexpired ones remain.
        """
        now, remaining = self.clock(), 0
        async for item in plan.items():
            backup = self._from_item(item)
            if not await self._still_there("verify", backup):
                continue
            if backup.expires_at <= now and self.config.delete_expired:
                await self._delete("verify", backup)
                continue
            remaining += 1
        return VerificationOutcome(remaining={COLLECTION: remaining} if remaining else {})
