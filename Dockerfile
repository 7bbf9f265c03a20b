# One image for every service, the operator CLI, the topic/model init jobs and the producer:
#   docker build -t streamml .                 (or: make image, which also works with no registry)
#   docker run --rm streamml python -m services.features
# BASE_IMAGE: any Debian-based image with Python 3.11+ (python3-venv) on PATH as `python`.
# The default needs a registry; `make image` builds a local one from Debian's packages when
# none is reachable (containers/base-image.sh, docs/decisions/container-images.md).
# podman keeps HEALTHCHECK only in the docker format: podman build --format docker.
ARG BASE_IMAGE=python:3.11-slim

# The runtime dependencies of pyproject.toml as a requirements file: the build stage
# copies it by content, so an edit elsewhere in pyproject.toml (dev tools, pytest markers)
# does not reinstall every package.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/
RUN python -c "import tomllib; d = tomllib.load(open('/tmp/pyproject.toml', 'rb')); print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
WORKDIR /opt/streamml/src
# A C compiler for the features service's C kernel (services/features/_native.c), and
# Python's headers where the base lacks them (Debian's python3 keeps them in python3-dev;
# python:3.11-slim has them). Only in this stage: the built module is copied, the compiler
# is not.
RUN headers=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
 && extra=$(test -f "$headers/Python.h" || echo python3-dev) \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev $extra \
 && rm -rf /var/lib/apt/lists/*
# pip_ca (optional build secret): a CA bundle for pip where PyPI is reached through a
# TLS-inspecting proxy (make image passes the host's); without it the base's CAs are used.
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -m venv /opt/streamml/venv \
 && /opt/streamml/venv/bin/pip install --upgrade pip \
 && /opt/streamml/venv/bin/pip install -r /tmp/requirements.txt
COPY pyproject.toml setup.py README.md ./
COPY libs ./libs
COPY services ./services
COPY schemas ./schemas
# Installed in development mode: the Avro codec finds schemas/ next to the package sources
# (libs/streamml/../../schemas). The import fails the build if the C kernel did not build.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && /opt/streamml/venv/bin/pip install --no-deps -e . \
 && /opt/streamml/venv/bin/python -c "import services.features._native" \
 && find /opt/streamml -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/streamml/src/build

FROM ${BASE_IMAGE}
ENV PATH=/opt/streamml/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# librdkafka ships inside the confluent-kafka wheel; nothing else is needed at run time.
RUN groupadd --system --gid 10001 streamml \
 && useradd --system --uid 10001 --gid streamml --home-dir /app --create-home streamml \
 && mkdir -p /data && chown streamml:streamml /data
COPY --from=build /opt/streamml /opt/streamml
WORKDIR /app
USER 10001:10001
# Every service serves /metrics, /healthz and /readyz on this port (STREAMML_<SERVICE>_HTTP__PORT).
# /healthz stays 200 while a service restores its state (readiness waits for /readyz), so
# a long restore is not a failed health check. The one-shot jobs and the producer serve
# no HTTP: docker-compose.yml gives them their own check or none.
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["streamml", "--help"]
