#!/bin/bash
# buildkite-agent `environment` hook (/etc/buildkite-agent/hooks/environment),
# before every job. A job started with the build space nearly full would die
# half-way with ENOSPC: fail it now with a message that says why, and retire
# the instance (the agent finishes its other jobs, takes no new ones, exits 0,
# and the instance powers off). The agent sources this file: functions only.

buildkite_check_build_space() {
    local root=${BOOTSTRAP_ROOT:-} min_gib avail_kib
    # shellcheck source=/dev/null
    min_gib=$(. "$root/etc/buildkite-bootstrap/settings.env" && printf '%s' "${BK_MIN_FREE_SPACE_GIB:-0}")
    # Checkouts and the Nix store: one filesystem or two, the smaller free space counts.
    avail_kib=$(df -Pk "$root/var/lib/buildkite-agent" "$root/nix" | awk 'NR > 1 && (min == "" || $4 < min) { min = $4 } END { print min }')
    if ((avail_kib >= min_gib * 1024 * 1024)); then
        return 0
    fi
    local message="build space nearly full on ${BUILDKITE_AGENT_NAME:-this agent}: $((avail_kib / 1024)) MiB free, below the ${min_gib} GiB minimum"
    printf '+++ :warning: %s\n' "$message"
    printf 'The job did not start (exit status 75: retry it, it will run on another instance). This instance takes no more jobs and retires.\n'
    logger -t buildkite-build-space "$message: job ${BUILDKITE_JOB_ID:-?} refused, retiring the instance"
    # One SIGTERM per boot, however many jobs this refuses: a second would
    # cancel the running jobs. sudo, because the once-marker is root's.
    sudo -n "$root/usr/local/lib/buildkite-bootstrap/drain-agent.sh" build-space ||
        printf 'Could not drain the agent (drain-agent.sh failed): it keeps refusing jobs until it retires.\n'
    return 75
}

buildkite_check_build_space || exit $?
