#!/usr/bin/env bash
# Nix post-build-hook (/etc/nix/upload-to-cache.sh). The nix daemon runs it
# as root with OUT_PATHS (the built store paths, separated by spaces), waits
# for it, and fails the build when it exits non-zero. So it only queues the
# paths for buildkite-cache-upload.service (cache-uploader.sh) and always
# exits 0: a slow or failing S3 upload can never fail or stall a build.
set -uf
IFS=" "

QUEUE="${BOOTSTRAP_ROOT:-}/var/lib/buildkite-cache-upload/queue"

main() {
    if [[ -z "${OUT_PATHS:-}" ]]; then
        return 0
    fi
    local batch
    # Written aside, then moved in: the uploader never reads half a batch.
    # shellcheck disable=SC2086 # one line per store path
    if mkdir -p "$QUEUE/.new" && batch=$(mktemp "$QUEUE/.new/batch.XXXXXXXX") &&
        printf '%s\n' $OUT_PATHS >"$batch" && mv "$batch" "$QUEUE/"; then
        echo "Queued for the S3 cache: $OUT_PATHS"
    else
        echo "Could not queue for the S3 cache (not uploaded): $OUT_PATHS" >&2
    fi
}

main
exit 0
