#!/usr/bin/env bash
# ExecStopPost of buildkite-agent.service. The agent exits 0 when it
# disconnects for good (disconnect-after-idle-timeout, disconnect-after-uptime,
# a graceful stop): then the instance powers off and is terminated, unless it is a
# pool instance that the bootstrap's `release` stops back into the warm pool.
# systemd calls some signal deaths clean too (SERVICE_RESULT=success for
# SIGHUP, SIGINT, SIGTERM, SIGPIPE): only EXIT_CODE=exited with EXIT_STATUS=0
# is the end. Anything else is restarted (Restart=, RestartForceExitStatus=),
# and the instance stays.
# shellcheck source=userdata/lib/common.sh
. "${BOOTSTRAP_ROOT:-}/usr/local/lib/buildkite-bootstrap/lib/common.sh"
clean_environment SERVICE_RESULT EXIT_CODE EXIT_STATUS -- "$0"
set -euo pipefail

# Left by spot-interruption-watch.sh on an interruption notice.
RECLAIMED="$ROOT/run/buildkite-spot-watch/reclaimed"

main() {
    # $RETIRED tells the bootstrap, when the agent retires during its start checks,
    # that the power-off stopping it is no failure. In /run, root's alone: a job
    # cannot plant it, and a boot starts without it.
    if [[ "${EXIT_CODE:-}" == exited && "${EXIT_STATUS:-}" == 0 ]]; then
        : >"$RETIRED"
    fi
    if [[ -e "$RECLAIMED" ]]; then
        printf 'buildkite-agent stopped on a spot interruption: powering off\n' >&2
        systemctl --no-block poweroff
    elif [[ "${EXIT_CODE:-}" == exited && "${EXIT_STATUS:-}" == 0 ]]; then
        if "$ROOT/usr/local/sbin/buildkite-bootstrap" release; then
            printf 'buildkite-agent exited 0: back into the warm pool\n' >&2
            return 0
        fi
        printf 'buildkite-agent exited 0: powering off\n' >&2
        systemctl --no-block poweroff
    else
        printf 'buildkite-agent stopped (%s, EXIT_CODE=%s, EXIT_STATUS=%s): systemd restarts it\n' \
            "${SERVICE_RESULT:-?}" "${EXIT_CODE:-?}" "${EXIT_STATUS:-?}" >&2
    fi
}

main
