#!/usr/bin/env bash
# Build the project's images with podman (layers cached between runs):
#   localhost/water-platform  API, cycles, `water serve`, dashboard (deploy/Containerfile)
#   localhost/water-postgres  PostgreSQL 15        localhost/water-redis  Redis 7
# BASE_IMAGE: the image they start from. Default: the local Debian base, built by base.sh when
# missing (no registry needed). With a registry: BASE_IMAGE=python:3.11-slim.
# CA_BUNDLE: mounted into the platform build's pip step only (HTTPS re-signed by a local CA).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v podman >/dev/null || { echo "containers: podman is not installed (apt-get install podman runc debootstrap)" >&2; exit 1; }
base="${BASE_IMAGE:-localhost/water-base:bookworm}"
tag="${WATER_IMAGE_TAG:-latest}"
ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [ "$base" = localhost/water-base:bookworm ]; then
  deploy/containers/base.sh "$base"
  db_base="$base"
else
  db_base="${DB_BASE_IMAGE:-debian:bookworm-slim}"
fi
secret=()
[ -s "$ca" ] && secret=(--secret "id=ca,src=$ca")
build() {  # name containerfile base
  echo "containers: building localhost/$1:$tag"
  # Host network for RUN steps: no netavark network (nor its firewall rules) per build step.
  podman build --quiet --layers --network host -f "$2" --build-arg "BASE=$3" "${secret[@]}" -t "localhost/$1:$tag" . >/dev/null
}
build water-platform deploy/Containerfile "$base"
build water-postgres deploy/postgres/Containerfile "$db_base"
build water-redis deploy/redis/Containerfile "$db_base"
# Superseded layers of earlier builds would otherwise pile up on every code change.
podman image prune --force >/dev/null
echo "containers: images ready (tag $tag)"
