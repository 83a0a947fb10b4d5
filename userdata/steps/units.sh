#!/usr/bin/env bash
# Units, drop-ins and hooks, and the services that carry a boot on: the
# bootstrap service (every boot), the park service (a pool instance's first).
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

UNITS="$ROOT/etc/systemd/system"
AGENT_DROPINS="$UNITS/buildkite-agent.service.d"
# cloud-init's power_state reboots only when this marker exists, so a failed
# boot 1 powers off instead of rebooting.
REBOOT_MARKER="$WORK/reboot-requested"

# Units, drop-ins and hooks from $LIB into place. A baked boot runs this too:
# the user-data's copies of the scripts are what runs, on both paths.
install_files() {
    install -D -m 0644 "$LIB/buildkite-bootstrap.service" "$UNITS/buildkite-bootstrap.service"
    install -D -m 0644 "$LIB/buildkite-cache-upload.service" "$UNITS/buildkite-cache-upload.service"
    install -D -m 0644 "$LIB/buildkite-pool-park.service" "$UNITS/buildkite-pool-park.service"
    install -D -m 0644 "$LIB/spot-interruption-watch.service" "$UNITS/spot-interruption-watch.service"
    install -D -m 0644 "$LIB/agent-environment.conf" "$AGENT_DROPINS/environment.conf"
    install -D -m 0644 "$LIB/agent-lifecycle.conf" "$AGENT_DROPINS/lifecycle.conf"
    install -D -m 0755 "$LIB/build-space-hook.sh" "$ROOT/etc/buildkite-agent/hooks/environment"
    install -D -m 0755 "$LIB/upload-to-cache.sh" "$ROOT/etc/nix/upload-to-cache.sh"
    systemctl daemon-reload
}

enable_bootstrap_service() {
    systemctl enable buildkite-bootstrap.service
}

# --no-block: cloud-init's runcmd must not wait for the per-boot steps.
start_bootstrap_service() {
    systemctl start --no-block buildkite-bootstrap.service
}

# The park service waits for cloud-init to finish (its per-instance modules
# must not run again at the start), then runs `park`.
start_park_service() {
    systemctl start --no-block buildkite-pool-park.service
}

request_reboot() {
    mkdir -p "$WORK"
    touch "$REBOOT_MARKER"
}
