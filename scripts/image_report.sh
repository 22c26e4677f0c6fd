#!/usr/bin/env bash
# Per-layer and total sizes of an image, uncompressed and gzip -1 compressed (what a
# registry stores and a worker downloads on a cold start).
#
#   scripts/image_report.sh [--json] IMAGE...
#
# Streams `docker save IMAGE` through scripts/image/image_report.py (which writes nothing;
# Docker's daemon stages the export under its data root: leave the image's size free
# there). ~1-2 min per 5 GB on one core (the gzip). Markdown (the release attaches it) by
# default, JSON with --json.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fmt=()
if [ "${1:-}" = "--json" ]; then fmt=(--json); shift; fi
if [ "$#" -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    [ "$#" -eq 0 ] && exit 2
    exit 0
fi
for image in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "$image") || { echo "image_report: no image $image" >&2; exit 1; }
    docker save "$image" | python3 "$here/image/image_report.py" ${fmt[@]+"${fmt[@]}"} \
        --title "$image (${id:7:12})"
    [ "${#fmt[@]}" -gt 0 ] || echo
done
