#!/usr/bin/env bash
# The Buildkite agent: its package (install), its config and its start (every boot).
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

BUILDKITE_KEY_FINGERPRINT="32A37959C2FA5C3C99EFBC32A79206696452D198"
BUILDKITE_KEYRING="/usr/share/keyrings/buildkite-agent-archive-keyring.gpg"
# Set once start_agent has started the agent: from then on its exit may be a retirement.
AGENT_STARTED=false

# The repository's newest build of the pinned major version (3 -> 3.138.0-6100;
# madison lists the newest first) or of an exact version (3.87.0 -> 3.87.0-5805):
# a new major never reaches an instance unasked.
agent_package() {
    local version major=""
    if [[ "$BK_AGENT_VERSION" =~ ^[0-9]+$ ]]; then
        major=1
    fi
    # awk reads all its input: exiting early would fail apt-cache with SIGPIPE.
    version=$(apt-cache madison buildkite-agent |
        awk -F' *[|] *' -v want="$BK_AGENT_VERSION" -v major="$major" \
            '!found && ($2 == want || index($2, want (major ? "." : "-")) == 1) { print $2; found = 1 }')
    [[ -n "$version" ]] || die "buildkite-agent $BK_AGENT_VERSION is not in apt.buildkite.com"
    printf 'buildkite-agent=%s\n' "$version"
}

install_agent() {
    local keyring="$ROOT$BUILDKITE_KEYRING"
    curl -q -fsSL --proto '=https' --tlsv1.2 --retry 5 \
        "https://keys.openpgp.org/vks/v1/by-fingerprint/$BUILDKITE_KEY_FINGERPRINT" |
        gpg --dearmor | write_file 0644 "$keyring"
    gpg --show-keys --with-colons "$keyring" | grep "^fpr:*:$BUILDKITE_KEY_FINGERPRINT:" >/dev/null ||
        die "the downloaded Buildkite signing key is not $BUILDKITE_KEY_FINGERPRINT"
    printf 'deb [signed-by=%s] https://apt.buildkite.com/buildkite-agent stable main\n' "$BUILDKITE_KEYRING" |
        write_file 0644 "$ROOT/etc/apt/sources.list.d/buildkite-agent.list"
    apt_get update
    local package
    package=$(agent_package)
    apt_get install "$package"
    # Started only by `run`, with its config: an agent that starts from an
    # image with the package's placeholder token would crash into the start limit.
    systemctl disable --now buildkite-agent.service
}

# The token is read into memory and written with printf (a builtin): it never
# appears in a process's arguments.
write_agent_config() {
    local token
    token=$(<"$WORK/agent-token")
    [[ "$token" =~ ^[A-Za-z0-9._-]+$ ]] ||
        die "the value of $BK_AGENT_TOKEN_PARAMETER has characters no agent token has"
    {
        printf 'token="%s"\n' "$token"
        printf 'name="%s-%s-%%spawn"\n' "$BK_QUEUE" "$INSTANCE_ID"
        printf 'spawn=%s\n' "$BK_AGENTS_PER_INSTANCE"
        printf 'tags="nix=true,os=nixos,arch=%s,queue=%s,fleet=%s"\n' "$BK_ARCH" "$BK_QUEUE" "$BK_FLEET"
        printf 'tags-from-ec2-meta-data=true\n'
        printf 'build-path="/var/lib/buildkite-agent/builds"\n'
        printf 'hooks-path="/etc/buildkite-agent/hooks"\n'
        printf 'plugins-path="/etc/buildkite-agent/plugins"\n'
        # Floor instances hold min_instances: they must not idle out.
        if [[ "${BK_IDLE_TIMEOUT_SECONDS:-0}" != 0 ]]; then
            printf 'disconnect-after-idle-timeout=%s\n' "$BK_IDLE_TIMEOUT_SECONDS"
        fi
        if [[ "${BK_MAX_UPTIME_SECONDS:-0}" != 0 ]]; then
            printf 'disconnect-after-uptime=%s\n' "$BK_MAX_UPTIME_SECONDS"
        fi
    } | write_file 0640 "$AGENT_CONFIG"
    chgrp buildkite-agent "$AGENT_CONFIG"
}

# A bad token or config makes the agent exit at once: it must stay up a while.
start_agent() {
    systemctl start buildkite-cache-upload.service
    # Exits at once on an on-demand instance; on spot it drains the agent.
    systemctl start --no-block spot-interruption-watch.service
    AGENT_STARTED=true
    systemctl start buildkite-agent.service
    local check
    for check in 1 2 3 4; do
        sleep 5
        systemctl is-active --quiet buildkite-agent.service ||
            die "buildkite-agent is not running (check $check of 4): journalctl -u buildkite-agent"
    done
}
