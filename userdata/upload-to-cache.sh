#!/usr/bin/env bash
# Nix post-build-hook (/etc/nix/upload-to-cache.sh): signs each build's
# outputs and copies them to the fleet's S3 cache. The nix daemon runs it as
# root with OUT_PATHS, the built store paths separated by spaces.
set -euo pipefail
# OUT_PATHS is split on spaces below, and store paths must not be globbed.
set -f
IFS=" "

ROOT=${BOOTSTRAP_ROOT:-}
NIX="$ROOT/nix/var/nix/profiles/default/bin/nix"

main() {
    # shellcheck source=/dev/null
    . "$ROOT/etc/buildkite-bootstrap/settings.env"
    if [[ -z "${OUT_PATHS:-}" ]]; then
        return 0
    fi
    local cache="s3://$BK_CACHE_BUCKET?region=$BK_CACHE_REGION&secret-key=/etc/nix/cache-priv-key.pem"
    echo "Uploading paths to S3 cache: $OUT_PATHS"
    # shellcheck disable=SC2086 # one argument per store path
    exec "$NIX" copy --to "$cache" $OUT_PATHS
}

main
