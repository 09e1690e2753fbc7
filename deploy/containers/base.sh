#!/usr/bin/env bash
# Build the local Debian base image (no registry needed): debootstrap a minimal bookworm from
# Debian's archive and import it. Skipped when the image exists.
#   deploy/containers/base.sh [IMAGE]      (default localhost/water-base:bookworm)
set -euo pipefail
image="${1:-localhost/water-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if podman image exists "$image"; then
  echo "base: $image present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
root="$(mktemp -d /var/tmp/water-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "base: debootstrap bookworm into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -n 20 "$root.log" >&2; echo "base: debootstrap failed (log above)" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# A smaller image: no apt lists or caches, no docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | podman import \
  --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
echo "base: $image imported"
