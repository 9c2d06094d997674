#!/bin/sh
# One-shot init job of the compose stack (minio/mc image): the buckets, and the orchestrator's own
# MinIO user, limited to those buckets (the worker and the API never get the root credentials).
# Idempotent: safe to run again (`docker compose run --rm minio-init`).
#
# Environment (from .env through docker-compose.yml):
#   MINIO_ROOT_USER, MINIO_ROOT_PASSWORD            the MinIO administrator
#   DSR_S3_ACCESS_KEY_ID, DSR_S3_SECRET_ACCESS_KEY  the orchestrator's user (AWS_* in the worker and the API)
#   DSR_BUCKETS                                     "exports-bucket backups-bucket" (set in docker-compose.yml)
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${DSR_S3_ACCESS_KEY_ID:?}" "${DSR_S3_SECRET_ACCESS_KEY:?}"
: "${DSR_BUCKETS:?}"

until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
    echo "waiting for MinIO"
    sleep 2
done

resources=""
for bucket in $DSR_BUCKETS; do
    mc mb --ignore-existing "local/$bucket"
    resources="$resources\"arn:aws:s3:::$bucket\", \"arn:aws:s3:::$bucket/*\", "
done
resources=${resources%, }

cat > "${TMPDIR:-/tmp}/dsr-policy.json" <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [{
    "Effect": "Allow",
    "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
               "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
    "Resource": [$resources]
  }]
}
POLICY

mc admin policy create local dsr-orchestrator "${TMPDIR:-/tmp}/dsr-policy.json"
mc admin user add local "$DSR_S3_ACCESS_KEY_ID" "$DSR_S3_SECRET_ACCESS_KEY"
if ! mc admin user info local "$DSR_S3_ACCESS_KEY_ID" | grep -q dsr-orchestrator; then
    mc admin policy attach local dsr-orchestrator --user "$DSR_S3_ACCESS_KEY_ID"
fi
echo "buckets $DSR_BUCKETS ready for the orchestrator's user"
