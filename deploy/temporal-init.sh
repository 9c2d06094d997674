#!/bin/sh
# One-shot init job of the compose stack (temporalio/admin-tools image): the namespace the worker and
# the API use, with its retention, and the custom search attributes of a request's workflow.
# Idempotent: run it again (`docker compose run --rm temporal-init`) after changing the retention.
#
# Environment (set in docker-compose.yml, nothing secret):
#   TEMPORAL_ADDRESS        the frontend, e.g. temporal:7233
#   DSR_NAMESPACE           the namespace, e.g. dsr
#   DSR_RETENTION           how long closed workflow histories are kept, e.g. 720h
#   DSR_SEARCH_ATTRIBUTES   "Name:Type ..." (workflows/search.py; tests/test_compose.py keeps them equal)
set -eu

: "${TEMPORAL_ADDRESS:?}" "${DSR_NAMESPACE:?}" "${DSR_RETENTION:?}" "${DSR_SEARCH_ATTRIBUTES:?}"

until temporal operator cluster health --address "$TEMPORAL_ADDRESS" | grep -q SERVING; do
    echo "waiting for Temporal at $TEMPORAL_ADDRESS"
    sleep 2
done

if temporal operator namespace describe --address "$TEMPORAL_ADDRESS" --namespace "$DSR_NAMESPACE" >/dev/null 2>&1; then
    temporal operator namespace update --address "$TEMPORAL_ADDRESS" --namespace "$DSR_NAMESPACE" \
        --retention "$DSR_RETENTION"
    echo "namespace $DSR_NAMESPACE: retention $DSR_RETENTION"
else
    temporal operator namespace create --address "$TEMPORAL_ADDRESS" --namespace "$DSR_NAMESPACE" \
        --retention "$DSR_RETENTION" --description "DSR Orchestrator: one workflow per data subject request"
    echo "namespace $DSR_NAMESPACE: created, retention $DSR_RETENTION"
fi

# A new namespace reaches the frontend's cache after a few seconds.
until temporal operator search-attribute list --address "$TEMPORAL_ADDRESS" --namespace "$DSR_NAMESPACE" >/dev/null 2>&1; do
    sleep 1
done

existing=$(temporal operator search-attribute list --address "$TEMPORAL_ADDRESS" --namespace "$DSR_NAMESPACE")
for pair in $DSR_SEARCH_ATTRIBUTES; do
    name=${pair%%:*}
    type=${pair#*:}
    if printf '%s\n' "$existing" | grep -qw "$name"; then
        echo "search attribute $name: already registered"
    else
        temporal operator search-attribute create --address "$TEMPORAL_ADDRESS" --namespace "$DSR_NAMESPACE" \
            --name "$name" --type "$type"
        echo "search attribute $name ($type): registered"
    fi
done
