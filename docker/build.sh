#!/usr/bin/env bash
# Builds a static causalkv binary on the host and the FROM-scratch image
# causalkv:latest and causalkv:<version>. Needs no container registry (no base
# image is pulled) and no network beyond the crate registry.
#
#   docker/build.sh              # build binary + image
#   SKIP_IMAGE=1 docker/build.sh # binary only (target/docker/context/causalkv)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=target/docker
CONTEXT=$TARGET_DIR/context
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE=${CAUSALKV_IMAGE:-causalkv}

# glibc, statically linked; symbols stripped. A separate target directory
# keeps these flags from invalidating the normal debug/release builds.
echo "docker/build.sh: building the static binary (target $TARGET, into $TARGET_DIR)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C strip=symbols" \
  cargo build --release --bin causalkv --target "$TARGET" --target-dir "$TARGET_DIR"
BIN=$TARGET_DIR/$TARGET/release/causalkv
if ldd "$BIN" 2>&1 | grep -q '=>'; then
  echo "docker/build.sh: $BIN is dynamically linked; refusing to put it in a scratch image" >&2
  exit 1
fi

# The build context holds only what the image needs.
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/data"
cp "$BIN" "$CONTEXT/causalkv"
cp docker/passwd docker/group "$CONTEXT/"
echo "docker/build.sh: binary $(du -h "$CONTEXT/causalkv" | cut -f1)"
if [ -n "${SKIP_IMAGE:-}" ]; then
  exit 0
fi

# The classic builder needs no buildx plugin and no base image; BuildKit is
# used when the plugin is there.
if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
docker build --file docker/Dockerfile --tag "$IMAGE:latest" --tag "$IMAGE:$VERSION" \
  --label "org.opencontainers.image.version=$VERSION" "$CONTEXT"
docker image ls "$IMAGE"
