#!/usr/bin/env bash
# spot-interruption-watch.service: drains the Buildkite agent when EC2 is
# about to reclaim this spot instance. On-demand instances exit at once.
#
#   rebalance recommendation  SIGTERM: the agent stops taking jobs, finishes
#                             the running one and exits; the instance then
#                             powers off (agent-exited.sh)
#   interruption notice       SIGTERM (unless already sent), then SIGQUIT
#                             CANCEL_MARGIN seconds before the termination
#                             time: the job is cancelled and Buildkite records
#                             signal_reason agent_stop, which pipelines retry
#
# Each signal is sent at most once: a second SIGTERM is an immediate cancel
# in the agent, so the drain's SIGTERM goes through drain-agent.sh, whose
# once-per-boot marker the build-space hook shares. A signal waits until the
# agent is running (during the bootstrap there is none to drain). Both events
# are counted in CloudWatch. The console gets events only: no poll, failed or
# not, prints anything (EC2 keeps only the console's last 64 KiB).

# shellcheck source=userdata/lib/common.sh
. "${BOOTSTRAP_ROOT:-}/usr/local/lib/buildkite-bootstrap/lib/common.sh"
clean_environment SPOT_WATCH_IMDS SPOT_WATCH_INTERVAL SPOT_WATCH_CANCEL_MARGIN -- "$0"
set -euo pipefail

STATE="$ROOT/run/buildkite-spot-watch"
DRAIN="$LIB/drain-agent.sh"
IMDS=${SPOT_WATCH_IMDS:-http://169.254.169.254}/latest
# A poll fails fast and silently: no event yet is a 404, and a missed poll is
# taken again 5 s later.
IMDS_CURL=(curl -q -fs --max-time 2)
INTERVAL=${SPOT_WATCH_INTERVAL:-5}
# The agent's cancel-grace-period is 10 s; the rest is for Buildkite to
# receive the job's end before the instance goes.
CANCEL_MARGIN=${SPOT_WATCH_CANCEL_MARGIN:-30}
AGENT=buildkite-agent.service
METRICS_NAMESPACE=BuildkiteAutoscaler/Spot
LOG_TAG=spot-interruption-watch

# count METRIC: one data point, best effort, in the background: a slow
# CloudWatch (the CLI retries for minutes) must not hold back the drain.
count() {
    {
        aws cloudwatch put-metric-data --region "$BK_REGION" --namespace "$METRICS_NAMESPACE" \
            --metric-name "$1" --dimensions "fleet=$BK_FLEET,queue=$BK_QUEUE" --value 1 --unit Count ||
            log "could not count $1"
    } &
}

# once NAME: true the first time NAME is marked, false after.
once() {
    [[ ! -e "$STATE/$1" ]] || return 1
    touch "$STATE/$1"
}

# drain_once REASON: drain-agent.sh until it has answered for good (drained
# now or before, or refused its marker's directory); asked again every round,
# it would say so on the console every 5 s. It answers 1 while no agent runs.
drain_once() {
    [[ ! -e "$STATE/drained" ]] || return 0
    local rc=0
    "$DRAIN" "$1" || rc=$?
    if ((rc != 1)); then
        touch "$STATE/drained"
    fi
}

# cancel_once: SIGQUIT to the agent's main process, once; false (try again
# next round) while the agent is not running.
cancel_once() {
    [[ ! -e "$STATE/cancel" ]] || return 0
    systemctl is-active --quiet "$AGENT" || return 1
    systemctl kill --kill-whom=main --signal=SIGQUIT "$AGENT"
    touch "$STATE/cancel"
    log "sent SIGQUIT to $AGENT (cancel)"
}

on_rebalance() {
    if once rebalance-seen; then
        log "rebalance recommendation: draining the agent"
        count RebalanceRecommendations
    fi
    drain_once spot-rebalance
}

# on_notice TIME: the instance is terminated at TIME (ISO 8601, UTC).
on_notice() {
    local ends deadline
    # Two minutes from now when the time does not parse (date -d '' is midnight).
    if [[ -z "$1" ]] || ! ends=$(date -u -d "$1" +%s); then
        ends=$(($(date -u +%s) + 120))
    fi
    deadline=$((ends - CANCEL_MARGIN))
    if once notice-seen; then
        log "interruption notice: terminated at $1, running jobs cancelled at $(date -u -d "@$deadline" +%FT%TZ)"
        # agent-exited.sh powers off after any agent exit from now on: a
        # restarted agent could take a job it cannot finish.
        touch "$STATE/reclaimed"
        count InterruptionNotices
    fi
    drain_once spot-interruption
    if (($(date -u +%s) >= deadline)) && cancel_once; then
        exit 0
    fi
}

check() {
    local rebalance action
    if rebalance=$(imds_get meta-data/events/recommendations/rebalance) && [[ "$rebalance" == *noticeTime* ]]; then
        on_rebalance
    fi
    if action=$(imds_get meta-data/spot/instance-action) && [[ "$action" == *'"time"'* ]]; then
        on_notice "$(printf '%s' "$action" | sed -n 's/.*"time" *: *"\([^"]*\)".*/\1/p')"
    fi
}

main() {
    local lifecycle
    # Unreachable metadata fails the service; systemd starts it again.
    if ! lifecycle=$(imds_get meta-data/instance-life-cycle); then
        log "the instance metadata service did not answer"
        exit 1
    fi
    if [[ "$lifecycle" != spot ]]; then
        log "a $lifecycle instance: nothing to watch"
        exit 0
    fi
    read_settings
    mkdir -p "$STATE"
    log "watching for rebalance recommendations and interruption notices"
    while :; do
        check
        sleep "$INTERVAL"
    done
}

main
