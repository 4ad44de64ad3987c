#!/usr/bin/env bash
# Builds the gatekeeper container image, with nothing pulled from a registry:
#   1. a minimal Debian base (debootstrap --variant=minbase into a folder, trimmed, then
#      `docker import`), made once and cached under its tag;
#   2. the release binaries (`gatekeeper`, `gatekeeper-devchain`);
#   3. deploy/Dockerfile on top: non-root user 10001, /data volume, HEALTHCHECK.
#
# Usage: deploy/build-image.sh [IMAGE]          (default gatekeeper:dev)
# Environment: GATEKEEPER_BASE_IMAGE (default gatekeeper-base:bookworm-minbase),
#   GATEKEEPER_IMAGE_PROFILE=release|debug (default release; debug reuses `cargo test`'s build),
#   DEBIAN_MIRROR (default http://deb.debian.org/debian), CARGO_BUILD_JOBS (default 2).
# Needs root (or sudo) only the first time, for debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-gatekeeper:dev}"
base="${GATEKEEPER_BASE_IMAGE:-gatekeeper-base:bookworm-minbase}"
profile="${GATEKEEPER_IMAGE_PROFILE:-release}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
start=$SECONDS

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if docker image inspect "$base" >/dev/null 2>&1; then
  echo "== base image $base: cached"
else
  echo "== base image $base: debootstrap --variant=minbase bookworm"
  if ! command -v debootstrap >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  fi
  rootfs="$(mktemp -d)"
  trap 'as_root rm -rf "$rootfs"' EXIT
  as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  # Nothing the image needs at run time: package caches and lists, documentation, locales.
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log
  as_root tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  as_root rm -rf "$rootfs"
  trap - EXIT
  echo "== base image $base: built in $((SECONDS - start)) s"
fi

echo "== binaries ($profile)"
if [ "$profile" = release ]; then
  cargo build -j "${CARGO_BUILD_JOBS:-2}" --release -p gatekeeper -p gatekeeper-devchain --bins
else
  # The workspace's features, as `cargo test --workspace` built them: nothing is rebuilt.
  cargo build -j "${CARGO_BUILD_JOBS:-2}" --workspace --bins
fi
bin_dir="target/$profile"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin_dir/gatekeeper" "$bin_dir/gatekeeper-devchain" deploy/Dockerfile "$ctx/"
docker build --quiet --build-arg "BASE=$base" -t "$image" "$ctx" >/dev/null
echo "== image $image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'), built in $((SECONDS - start)) s"
