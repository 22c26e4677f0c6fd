#!/usr/bin/env bash
# Make a local stand-in for the image's OS base (debian:bookworm-slim + Debian's python3),
# for builds and tests on machines that reach no container registry: a minimal Debian
# bookworm (Python 3.11, pip, venv, CA certificates) made with debootstrap and imported
# into Docker. Same OS, Python build and glibc as the released image's base.
#
#   scripts/make_base_image.sh [IMAGE]        default IMAGE: comfy-worker-testbase:bookworm
#
# Then build with it:  ./build.sh --base-image comfy-worker-testbase:bookworm --cpu ...
#
# Needs root, debootstrap and a running Docker daemon. Idempotent: returns at once when
# IMAGE already exists (set FORCE=1 to remake it). ~40 s and ~300 MB on a fast mirror.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (bookworm),
# EXTRA_PACKAGES (comma-separated, added to the default set).
set -euo pipefail

IMAGE=${1:-comfy-worker-testbase:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES="python3,python3-venv,python3-pip,ca-certificates${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [ "${FORCE:-0}" != "1" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "make_base_image: $IMAGE already exists (FORCE=1 remakes it)"
    exit 0
fi
for tool in debootstrap docker tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make_base_image: '$tool' not found (apt-get install -y debootstrap docker.io)" >&2
        exit 1
    fi
done
if [ "$(id -u)" != "0" ]; then
    echo "make_base_image: debootstrap needs root (run with sudo)" >&2
    exit 1
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/comfy-worker-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "make_base_image: debootstrap $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" \
    > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Smaller image: package lists and caches are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*

echo "make_base_image: importing as $IMAGE"
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
docker image inspect --format 'make_base_image: {{.Id}} {{.Size}} bytes' "$IMAGE"
