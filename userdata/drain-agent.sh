#!/usr/bin/env bash
# drain-agent.sh REASON: one SIGTERM to the Buildkite agent, at most once per
# boot, whoever asks: the build-space hook (through sudo: it runs as the
# agent's user) and the spot watcher. The first SIGTERM is the agent's
# graceful stop (running jobs finish, no new ones start, then it exits 0);
# a second cancels every running job, a third exits 1 at once.
#
# The marker that says "sent" is root's, under /run: gone at every boot, and
# the agent's user (so any job) can neither create it first, which would
# keep the spot watcher from draining, nor remove it.
#
# Exit 0: sent now or before. Exit 1: no agent runs yet (ask again later).
# Exit 2: the marker's directory is not root's alone (never drains).

# shellcheck source=userdata/lib/common.sh
. "${BOOTSTRAP_ROOT:-}/usr/local/lib/buildkite-bootstrap/lib/common.sh"
clean_environment -- "$0" "$@"
set -euo pipefail

STATE="$ROOT/run/buildkite-agent-drain"
MARKER="$STATE/signalled"
AGENT=buildkite-agent.service
LOG_TAG=drain-agent

# The marker's directory is root's alone: anything else is refused, not used.
check_state_dir() {
    mkdir -p "${STATE%/*}"
    mkdir -m 0755 "$STATE" 2>/dev/null || [[ -d "$STATE" ]]
    local mode
    mode=$(stat -c %A "$STATE")
    if [[ -L "$STATE" || ! -O "$STATE" || "${mode:5:1}" == w || "${mode:8:1}" == w ]]; then
        log "$STATE is not root's alone ($mode): not draining"
        exit 2
    fi
}

main() {
    local reason=${1:?usage: drain-agent.sh REASON}
    check_state_dir
    if [[ -e "$MARKER" ]]; then
        log "the agent is draining already ($(<"$MARKER")): no second SIGTERM ($reason)"
        return 0
    fi
    systemctl is-active --quiet "$AGENT" || return 1
    # noclobber: of two callers at once, one creates the marker and signals.
    if ! (set -o noclobber && printf '%s\n' "$reason" >"$MARKER") 2>/dev/null; then
        log "the agent is draining already: no second SIGTERM ($reason)"
        return 0
    fi
    systemctl kill --kill-whom=main --signal=SIGTERM "$AGENT"
    log "sent SIGTERM to $AGENT ($reason)"
}

main "$@"
