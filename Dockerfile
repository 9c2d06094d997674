# The worker and the API image: `docker run IMAGE worker` or `docker run IMAGE api`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DSR_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY workflows/ workflows/
COPY activities/ activities/
COPY connectors/ connectors/
COPY workers/ workers/
COPY api/ api/
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dsr \
    && mkdir -p /var/lib/dsr && chown dsr /var/lib/dsr

USER dsr
ENV DSR_STATE_DIR=/var/lib/dsr
ENTRYPOINT ["dsr"]
CMD ["--help"]
