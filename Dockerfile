# The worker and API image: `docker run IMAGE worker` or `docker run IMAGE api` (entry point `dsr`).
# Two stages: the build stage installs the distribution into a virtualenv; the runtime stage copies
# that virtualenv only (no pip cache, no build files) and runs as an unprivileged user.
# No secret is needed to build it, and none is baked in: they come from the environment at run time.

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY workflows/ workflows/
COPY activities/ activities/
COPY connectors/ connectors/
COPY workers/ workers/
COPY api/ api/
RUN /opt/venv/bin/pip install .

FROM python:3.11.11-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DSR_LOG_FORMAT=json \
    DSR_STATE_DIR=/var/lib/dsr

RUN groupadd --system --gid 10001 dsr \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/dsr --shell /usr/sbin/nologin dsr \
    && mkdir -p /var/lib/dsr /etc/dsr \
    && chown dsr /var/lib/dsr
COPY --from=build /opt/venv /opt/venv
COPY deploy/healthcheck.py /opt/dsr/healthcheck.py

USER 10001:10001
WORKDIR /var/lib/dsr
EXPOSE 8080
# `dsr api`: GET /healthz answers; `dsr worker`: its process is alive (it has no HTTP port yet).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/opt/dsr/healthcheck.py"]
ENTRYPOINT ["dsr"]
CMD ["--help"]
