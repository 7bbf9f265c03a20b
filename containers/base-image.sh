#!/usr/bin/env bash
# Build a local Debian bookworm base image (Python 3.11, python3-venv, non-root tools) from
# Debian's packages with mmdebstrap, for machines that cannot pull python:3.11-slim (no
# image registry reachable). Prints the image name on its last line.
#
#   containers/base-image.sh [ENGINE]        ENGINE: podman (default) or docker
#
# The image is tagged with a digest of this script, so a second run finds it in the
# engine's own storage and returns at once; a changed package list builds a new one.
# Only the root filesystem tar is written, to ~/.cache/streamml/images (outside the repo).
set -euo pipefail
engine=${1:-${CONTAINER_ENGINE:-podman}}
here=$(cd "$(dirname "$0")" && pwd)
# What the streamml image and the Kafka image need at run time; compilers are added in
# the Dockerfile's build stage only.
packages=python3,python3-venv,python-is-python3,ca-certificates,passwd,tzdata
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
digest=$( { cat "$0"; echo "$packages $suite $mirror"; } | sha256sum | cut -c1-12)
image="localhost/streamml-base:$suite-$digest"

if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image is cached" >&2
  echo "$image"
  exit 0
fi
command -v mmdebstrap >/dev/null || {
  echo "error: mmdebstrap not found: install it (Debian/Ubuntu: apt-get install mmdebstrap)" >&2
  exit 2
}
cache=${STREAMML_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/streamml}/images
mkdir -p "$cache"
rootfs="$cache/streamml-base-$suite-$digest.tar"
if [ ! -s "$rootfs" ]; then
  echo "building $image from Debian $suite packages (mmdebstrap, about a minute)" >&2
  # minbase: essential packages + apt; the apt lists and docs are dropped to keep it small.
  mmdebstrap --variant=minbase --format=tar --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$rootfs.part" "$mirror $suite main" "$mirror $suite-updates main" \
    "${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $suite-security main" >&2
  mv "$rootfs.part" "$rootfs"
fi
"$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$rootfs" "$image" >&2
echo "$image"
