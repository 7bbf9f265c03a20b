# One image for every service, the operator CLI, the topic/model init jobs and the producer:
#   docker build -t streamml .
#   docker run --rm streamml python -m services.features
# The project is installed in development mode from /opt/streamml/src because the Avro codec
# finds schemas/ next to the package sources (libs/streamml/../../schemas).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/streamml/src
# A C compiler for the features service's optional kernel (services/features/_native.c);
# only in this stage: the built module is copied, the compiler is not.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY libs ./libs
COPY services ./services
COPY schemas ./schemas
RUN python -m venv /opt/streamml/venv \
 && /opt/streamml/venv/bin/pip install -e . \
 && /opt/streamml/venv/bin/python -c "import services.features._native" \
 && find /opt/streamml -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
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
EXPOSE 8000
CMD ["streamml", "--help"]
