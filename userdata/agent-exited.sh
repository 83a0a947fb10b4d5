#!/usr/bin/env bash
# ExecStopPost of buildkite-agent.service. The agent exits 0 when it
# disconnects for good (disconnect-after-idle-timeout, disconnect-after-uptime,
# or a stop): then the instance powers off and is terminated, unless it is a
# pool instance that the bootstrap's `release` stops back into the warm pool.
# After a crash systemd restarts the agent, and the instance stays.
set -euo pipefail

# Left by spot-interruption-watch.sh on an interruption notice.
RECLAIMED="${BOOTSTRAP_ROOT:-}/run/buildkite-spot-watch/reclaimed"

main() {
    local result=${SERVICE_RESULT:-unknown}
    if [[ -e "$RECLAIMED" ]]; then
        printf 'buildkite-agent stopped on a spot interruption: powering off\n' >&2
        systemctl --no-block poweroff
    elif [[ "$result" == success ]]; then
        if "${BOOTSTRAP_ROOT:-}/usr/local/sbin/buildkite-bootstrap" release; then
            printf 'buildkite-agent exited cleanly: back into the warm pool\n' >&2
            return 0
        fi
        printf 'buildkite-agent exited cleanly: powering off\n' >&2
        systemctl --no-block poweroff
    else
        printf 'buildkite-agent stopped (%s, %s=%s): systemd restarts it\n' \
            "$result" "${EXIT_CODE:-?}" "${EXIT_STATUS:-?}" >&2
    fi
}

main
