#!/usr/bin/env bash
# `make image`: build the streamml image from the Dockerfile, and the images it stands on
# when no registry can give them. Prints, as its last two lines,
#   STREAMML_IMAGE=<image>
#   KAFKA_IMAGE=<image>
# for docker-compose.yml (export both, or put them in .env next to it).
#
# Settings (environment):
#   CONTAINER_ENGINE  podman (default when installed) or docker
#   BASE_IMAGE        auto (default): python:3.11-slim when the engine has it or can pull
#                     it, else a local Debian bookworm base (containers/base-image.sh,
#                     cached in the engine's storage); or any image name
#   KAFKA_IMAGE       auto (default): apache/kafka:3.9.1 when present or pullable, else one
#                     built from the Maven Central jars (containers/kafka-image.sh)
#   STREAMML_IMAGE    the tag to build (default localhost/streamml:local)
#   PIP_CA            CA bundle for pip inside the build (default: pip's own setting, then
#                     the system bundle), for PyPI behind a TLS-inspecting proxy
#   BUILD_LIMITS      podman only: limits of the build's RUN steps (default open files and
#                     processes 1024: podman's defaults exceed some sandboxes' hard limits)
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${CONTAINER_ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
command -v "$engine" >/dev/null || {
  echo "error: $engine not found: install podman (apt-get install podman runc) or docker," \
       "or set CONTAINER_ENGINE" >&2
  exit 2
}
image=${STREAMML_IMAGE:-localhost/streamml:local}

have_or_pull() {  # an image the engine has, or can pull within a minute
  "$engine" image inspect "$1" >/dev/null 2>&1 || timeout 60 "$engine" pull -q "$1" >/dev/null 2>&1
}

base=${BASE_IMAGE:-auto}
if [ "$base" = auto ]; then
  if have_or_pull python:3.11-slim; then
    base=python:3.11-slim
  else
    echo "python:3.11-slim cannot be pulled: using a local Debian base image" >&2
    base=$(containers/base-image.sh "$engine" | tail -n 1)
  fi
fi

kafka=${KAFKA_IMAGE:-auto}
kafka_build=
if [ "$kafka" = auto ]; then
  if have_or_pull apache/kafka:3.9.1; then
    kafka=apache/kafka:3.9.1
  else
    # Built beside the streamml image (both mostly download and unpack): ~1 min saved cold.
    echo "apache/kafka cannot be pulled: building Kafka from the Maven Central jars" >&2
    kafka_out=$(mktemp)
    trap 'rm -f "$kafka_out"' EXIT
    containers/kafka-image.sh "$base" "$engine" > "$kafka_out" &
    kafka_build=$!
  fi
fi

ca=${PIP_CA:-${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}}
ca=${ca:-/etc/ssl/certs/ca-certificates.crt}
args=(--build-arg "BASE_IMAGE=$base" -t "$image")
[ -s "$ca" ] && args+=(--secret "id=pip_ca,src=$ca")
# podman writes OCI images by default, which drop HEALTHCHECK.
if [ "$(basename "$engine")" = podman ]; then
  args+=(--format docker)
  read -r -a limits <<< "${BUILD_LIMITS:---ulimit nofile=1024:1024 --ulimit nproc=1024:1024}"
  args+=("${limits[@]}")
fi
echo "building $image on $base" >&2
started=$(date +%s)
"$engine" build "${args[@]}" . >&2
if [ -n "$kafka_build" ]; then
  wait "$kafka_build" || { echo "error: the Kafka image did not build (output above)" >&2; exit 1; }
  kafka=$(tail -n 1 "$kafka_out")
fi
size=$("$engine" image inspect "$image" --format '{{.Size}}')
echo "built $image in $(( $(date +%s) - started ))s, $(( size / 1000000 )) MB" >&2
echo "STREAMML_IMAGE=$image"
echo "KAFKA_IMAGE=$kafka"
