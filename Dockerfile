# syntax=docker/dockerfile:1
# The images of the five services and the `choreo` CLI, from the pinned, hash-checked
# requirements/*.lock (scripts/lock.sh writes them from pyproject.toml):
#
#   docker build -t choreo:latest .                                # ingest, store, audit, fraud, CLI
#   docker build -t choreo-transform:latest --target transform .   # transform: adds Pathway
#   docker run choreo:latest                             # ingest (the default command)
#   docker run choreo:latest python -m services.audit    # any service but transform
#   docker run choreo:latest choreo --help               # the CLI
#
# `choreo` has no extras installed: no Pathway (about 1.4 GB, BSL 1.1), no matplotlib, no
# server binaries (those are for the embedded dev stack). Only `choreo-transform` has
# Pathway, the one service that runs it.
#
# Multi-stage: a final stage has the venv and nothing that built it (no pip cache, no
# compilers), runs as the non-root user 10001 and checks /healthz. docker-compose.yml and
# k8s/ run them with a read-only root filesystem.

# Every stage must use the same Python: the venv's interpreter is a symlink into the base
# image. The locks are for CPython 3.11.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# The pinned dependencies first (a layer that changes only with the lock), every file
# checked against its hash; then Choreo itself, without resolving anything again.
COPY requirements/runtime.lock requirements/
RUN /opt/venv/bin/pip install --require-hashes -r requirements/runtime.lock
# Only what the install needs (README.md because pyproject.toml names it as the readme).
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY choreo ./choreo
# A regular (not editable) install, so the venv holds the code and its package data (the
# audit migrations): the final stage needs nothing but the venv, and there is one copy of
# the source, in site-packages.
RUN /opt/venv/bin/pip install --no-deps .

FROM builder AS builder-transform
COPY requirements/transform.lock requirements/
RUN /opt/venv/bin/pip install --require-hashes -r requirements/transform.lock

FROM ${PYTHON_IMAGE} AS base
# uid/gid 10001 match runAsUser/runAsGroup in k8s/base; no home, no login shell.
RUN groupadd --system --gid 10001 choreo \
    && useradd --system --uid 10001 --gid choreo --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin choreo
# The one place a service keeps state on disk (transform's Pathway persistence): a volume
# mounted here starts owned by the choreo user, as this directory is.
RUN mkdir -p /var/lib/choreo && chown 10001:10001 /var/lib/choreo
# PYTHONUNBUFFERED: log lines reach `docker logs` at once. PYTHONDONTWRITEBYTECODE: the root
# filesystem is read-only in compose and k8s (pip already compiled the bytecode).
# CHOREO_HTTP_HOST: the settings default is 127.0.0.1, unreachable from outside a container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHOREO_HTTP_HOST=0.0.0.0 \
    CHOREO_HTTP_PORT=8000
# An empty directory: settings look for .choreo/env relative to it and find none, so only
# the CHOREO_* variables given to the container count.
WORKDIR /app
EXPOSE 8000
# /healthz answers once the service has connected to NATS (uvicorn serves after the
# lifespan startup), hence the start period. Shell form, for ${CHOREO_HTTP_PORT:-8000} and
# `|| exit 1` (HEALTHCHECK knows only 0 and 1).
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${CHOREO_HTTP_PORT:-8000}/healthz', timeout=3)" || exit 1

FROM base AS transform
COPY --from=builder-transform /opt/venv /opt/venv
# Numeric, so that Kubernetes' runAsNonRoot can check it; 10001 is `choreo`.
USER 10001:10001
CMD ["python", "-m", "services.transform"]

# The default target (last): every service but transform, and the CLI.
FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
CMD ["python", "-m", "services.ingest"]
