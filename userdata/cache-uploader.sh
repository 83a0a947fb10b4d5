#!/usr/bin/env bash
# buildkite-cache-upload.service: uploads the batches of store paths that the
# post-build hook (upload-to-cache.sh) queued to the fleet's S3 cache, signed
# with the cache key. Every `nix copy` is bounded; a failed batch is logged,
# counted and dropped (the cache only saves time; a later build that needs
# the paths rebuilds or re-uploads them). Nothing here can fail a build.
#
#   cache-uploader.sh serve PASS_SECONDS DRAIN_SECONDS
#       the service: a pass over the queue at most every 5 s, each pass
#       bounded by PASS_SECONDS; on SIGTERM (power-off stops this unit after
#       buildkite-agent), one last pass bounded by DRAIN_SECONDS.
#   cache-uploader.sh drain SECONDS
#       one pass over the queue, bounded by SECONDS.
# shellcheck source=userdata/lib/common.sh
. "${BOOTSTRAP_ROOT:-}/usr/local/lib/buildkite-bootstrap/lib/common.sh"
clean_environment -- "$0" "$@"
set -u

STATE="$ROOT/var/lib/buildkite-cache-upload"
QUEUE="$STATE/queue"
FAILURES="$STATE/failed-batches"
LOG_TAG=buildkite-cache-upload

count_failure() {
    local failed=0
    if [[ -f "$FAILURES" ]]; then
        failed=$(<"$FAILURES")
    fi
    failed=$((failed + 1))
    printf '%s\n' "$failed" >"$FAILURES"
    printf '%s' "$failed"
}

# upload BATCH SECONDS: one bounded `nix copy`; the batch is gone either way.
upload() {
    local batch=$1 seconds=$2 paths=() rc=0
    mapfile -t paths <"$batch"
    read_settings
    local cache="s3://$BK_CACHE_BUCKET?region=$BK_CACHE_REGION&secret-key=/etc/nix/cache-priv-key.pem"
    timeout "$seconds" "$NIX" copy --to "$cache" "${paths[@]}" || rc=$?
    rm -f "$batch"
    if ((rc == 0)); then
        log "uploaded ${#paths[@]} paths"
    else
        log "FAILED upload of ${#paths[@]} paths (exit $rc$( ((rc == 124)) && printf ', timed out after %ss' "$seconds"), failed batches: $(count_failure)): ${paths[*]}"
    fi
}

# drain SECONDS: the queued batches, until SECONDS have passed.
drain() {
    local deadline=$(($(date +%s) + $1)) batch left
    for batch in "$QUEUE"/batch.*; do
        [[ -f "$batch" ]] || continue
        left=$((deadline - $(date +%s)))
        if ((left <= 0)); then
            local waiting=("$QUEUE"/batch.*)
            log "out of time: ${#waiting[@]} batches wait for the next pass"
            return 0
        fi
        upload "$batch" "$left"
    done
}

serve() {
    local stopping=false pause
    trap 'stopping=true' TERM
    mkdir -p "$QUEUE"
    while [[ "$stopping" == false ]]; do
        drain "$1"
        # In the background, so that SIGTERM ends the wait at once.
        sleep 5 &
        pause=$!
        wait "$pause" || kill "$pause" 2>/dev/null || true
    done
    log "stopping: uploading what is queued, for at most $2 s"
    drain "$2"
}

case "${1:-}" in
serve) serve "$2" "$3" ;;
drain) drain "$2" ;;
*)
    printf 'usage: %s serve PASS_SECONDS DRAIN_SECONDS | drain SECONDS\n' "$0" >&2
    exit 2
    ;;
esac
