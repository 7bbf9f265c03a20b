#!/usr/bin/env bash
# Build the Kafka image from the Maven Central jars cached by the local broker
# (~/.cache/streamml/kafka/<version>/libs; fetched with Maven on first use).
#   containers/kafka-image.sh BASE_IMAGE [ENGINE]      prints the image name on its last line
set -euo pipefail
base=${1:?usage: containers/kafka-image.sh BASE_IMAGE [ENGINE]}
engine=${2:-${CONTAINER_ENGINE:-podman}}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../.venv/bin/python}
# The project's own code fetches the jars (Maven, cached), so both use the same Kafka.
libs=$("$python" -c 'from streamml.broker import fetch_kafka_jars; print(fetch_kafka_jars())')
version=$("$python" -c 'from streamml.broker import KAFKA_VERSION; print(KAFKA_VERSION)')
image="localhost/streamml-kafka:$version"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$here"/kafka/* "$context"/
mkdir "$context/libs"
cp "$libs"/*.jar "$context/libs/"
args=(--build-arg "BASE_IMAGE=$base" -t "$image" -f "$context/Containerfile")
if [ "$(basename "$engine")" = podman ]; then
  read -r -a limits <<< "${BUILD_LIMITS:---ulimit nofile=1024:1024 --ulimit nproc=1024:1024}"
  args+=(--format docker "${limits[@]}")
fi
"$engine" build "${args[@]}" "$context" >&2
echo "$image"
