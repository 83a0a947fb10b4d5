#!/usr/bin/env bash
# The bootstrap's end: proof before any job that the instance can report
# complete, then the report (bootstrap=complete, ready-at and the versions).
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# The CLI retries each call itself; these are for an outage longer than its retries.
TAG_CHECK_ATTEMPTS=3

# Proves, before the agent takes a job, that the role lets this instance tag
# itself: otherwise it would run jobs until the reaper ends it as stuck. Only
# EC2's own refusal is a refusal; a network error or a throttle is retried,
# then fails as what it is.
check_tag_permission() {
    local errors="$WORK/create-tags-dry-run" attempt
    mkdir -p "$WORK"
    for ((attempt = 1; attempt <= TAG_CHECK_ATTEMPTS; attempt++)); do
        if aws ec2 create-tags --dry-run --region "$BK_REGION" --resources "$INSTANCE_ID" \
            --tags "Key=$BK_BOOTSTRAP_TAG,Value=$BK_BOOTSTRAP_COMPLETE" "Key=$BK_READY_AT_TAG,Value=0" \
            "Key=$BK_AGENT_VERSION_TAG,Value=0" "Key=$BK_NIX_VERSION_TAG,Value=0" 2>"$errors"; then
            return 0
        fi
        # A permitted dry run "fails" with DryRunOperation.
        if grep -q DryRunOperation "$errors"; then
            return 0
        fi
        cat "$errors" >&2
        if refused "$errors"; then
            die "REFUSED: ec2:CreateTags on $INSTANCE_ID ($BK_BOOTSTRAP_TAG, $BK_READY_AT_TAG, $BK_AGENT_VERSION_TAG, $BK_NIX_VERSION_TAG): the instance could never report complete"
        fi
        if ((attempt < TAG_CHECK_ATTEMPTS)); then
            log "could not check ec2:CreateTags (attempt $attempt of $TAG_CHECK_ATTEMPTS), retrying in 10 s"
            sleep 10
        fi
    done
    die "could not check ec2:CreateTags on $INSTANCE_ID: $(last_error "$errors")"
}

# One call: the agents are counted from ready-at, and the versions come with it.
mark_complete() {
    local agent nix
    agent=$(agent_version)
    nix=$(nix_version)
    rm -rf "$WORK"
    tag_instance "$BK_BOOTSTRAP_COMPLETE" "Key=$BK_READY_AT_TAG,Value=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "Key=$BK_AGENT_VERSION_TAG,Value=$agent" "Key=$BK_NIX_VERSION_TAG,Value=$nix"
    touch "$FLAG"
    log "complete: buildkite-agent is running"
}
