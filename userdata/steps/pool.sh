#!/usr/bin/env bash
# The warm pool: a pool instance parks (reads its volume, stops) on its first
# boot, boots on when the scaler starts it, and returns to the pool after its
# agent exits when the scaler's on-exit tag says so.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# Set by read_pool_state: this boot parks the instance instead of booting on.
PARK=false

# A pool instance parks on its first boot and boots on when the scaler has
# started it, which it tags started-at first. The instance metadata tells
# the two apart, where the disk cannot: a baked overlayroot image reruns
# cloud-init, and so `prepare`, at every start.
read_pool_state() {
    require_settings BK_STARTED_AT_TAG BK_BOOTSTRAP_POOLED BK_ON_EXIT_TAG BK_ON_EXIT_STOP
    local keys
    keys=$(imds_get meta-data/tags/instance/) ||
        die "no instance tags in the metadata: a pool instance needs InstanceMetadataTags=enabled in its launch template"
    if ! grep -qxF "$BK_STARTED_AT_TAG" <<<"$keys"; then
        PARK=true
    fi
}

# Snapshot blocks load lazily from S3 on their first read: read every file
# of the root filesystem once, so a started pool instance reads at full
# speed. Best effort: a file that vanishes mid-read only stays cold.
warm_volume() {
    find "$ROOT/" -xdev -type f -exec cat -- {} + >/dev/null 2>&1 || log "some files could not be read"
}

# Only with overlayroot: its next boot is clean. An EBS root keeps what the
# jobs wrote, so such an instance always terminates (exit 1: the caller powers off).
check_release() {
    if [[ "$BK_ROLE" != pool || "$BK_ROOT_MODE" != overlayroot ]]; then
        exit 1
    fi
    require_settings BK_ON_EXIT_TAG BK_ON_EXIT_STOP BK_BOOTSTRAP_POOLED
}

# The scaler's tag on a started pool instance, read from the instance metadata
# (InstanceMetadataTags): no permission needed, and none to read other
# instances. A missing tag means terminate (exit 1).
check_on_exit() {
    local action
    action=$(imds_get "meta-data/tags/instance/$BK_ON_EXIT_TAG" 2>/dev/null) || action=""
    if [[ "$action" != "$BK_ON_EXIT_STOP" ]]; then
        log "the warm pool of $BK_QUEUE needs no instance (on-exit=${action:-unset}): terminating"
        exit 1
    fi
}

# Tagged first: a stop that fails ends in the ERR trap, which powers off,
# and a powered-off instance terminates (InstanceInitiatedShutdownBehavior).
stop_into_pool() {
    require_settings BK_BOOTSTRAP_POOLED
    tag_instance "$BK_BOOTSTRAP_POOLED"
    aws ec2 stop-instances --region "$BK_REGION" --instance-ids "$INSTANCE_ID" >/dev/null
    log "stopping into the warm pool of $BK_QUEUE"
}
