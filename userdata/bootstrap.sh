#!/usr/bin/env bash
# Bootstrap of one Buildkite agent instance, installed as
# /usr/local/sbin/buildkite-bootstrap by the cloud-config.
#
#   buildkite-bootstrap prepare   boot 1, from cloud-init's runcmd: AWS CLI,
#                                 then overlayroot + reboot, or (ebs) start
#                                 the bootstrap service right away
#   buildkite-bootstrap run       the buildkite-bootstrap service: secrets,
#                                 Nix + S3 cache, buildkite-agent, tags
#   buildkite-bootstrap park      a warm-pool instance's first boot, after
#                                 cloud-init: read the volume once, tag
#                                 bootstrap=pooled, stop (not terminate)
#   buildkite-bootstrap release   the agent exited for good: a pool instance
#                                 stops back into its pool when the scaler's
#                                 on-exit tag says so (exit 0); exit 1 tells
#                                 the caller to power off
#
# Every step is a function run by run_step. Any failing command ends the
# step: the instance tags itself bootstrap=failed, prints the step and exit
# code to the console (the reaper logs the console before terminating) and
# powers off. Never add `set -x`: secrets pass through this script.
#
# Every absolute path it writes is under $ROOT, so tests can run it against
# a temporary directory with stub commands on PATH.
set -Eeuo pipefail

ROOT=${BOOTSTRAP_ROOT:-}
SETTINGS="$ROOT/etc/buildkite-bootstrap/settings.env"
LIB="$ROOT/usr/local/lib/buildkite-bootstrap"
WORK="$ROOT/run/buildkite-bootstrap"
FLAG="$ROOT/var/lib/buildkite-bootstrap-complete"
REBOOT_MARKER="$WORK/reboot-requested"
AGENT_DROPINS="$ROOT/etc/systemd/system/buildkite-agent.service.d"
AGENT_HOME="$ROOT/var/lib/buildkite-agent"
IMDS="http://169.254.169.254/latest"
NIX_INSTALLER_URL="https://install.determinate.systems/nix"
BUILDKITE_KEY_FINGERPRINT="32A37959C2FA5C3C99EFBC32A79206696452D198"
BUILDKITE_KEYRING="/usr/share/keyrings/buildkite-agent-archive-keyring.gpg"
NIXOS_CACHE_KEY="cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
DEFAULT_USER="ubuntu"
# unattended-upgrades may hold the dpkg lock on a fresh instance: wait for it.
APT_GET=(apt-get -q -y -o DPkg::Lock::Timeout=600)

export DEBIAN_FRONTEND=noninteractive
umask 022

STEP="start"
INSTANCE_ID=""

log() {
    printf 'buildkite-bootstrap: %s\n' "$*" >&2
}

die() {
    log "$*"
    return 1
}

run_step() {
    STEP=$1
    log "step $STEP"
    "$STEP"
}

tag_instance() {
    local state=$1
    shift
    aws ec2 create-tags --region "$BK_REGION" --resources "$INSTANCE_ID" \
        --tags "Key=$BK_BOOTSTRAP_TAG,Value=$state" "$@"
}

# ERR trap: report the failing step, tag the instance failed, power off.
on_failure() {
    local rc=$1
    # A failure inside $(...) is reported once, by the shell that waits for it.
    if ((BASH_SUBSHELL > 0)); then
        exit "$rc"
    fi
    trap - ERR TERM
    set +eu
    log "FAILED step=$STEP exit=$rc"
    if [[ -n "$INSTANCE_ID" && -n "${BK_REGION:-}" ]] && command -v aws >/dev/null; then
        tag_instance "$BK_BOOTSTRAP_FAILED" || log "could not tag $INSTANCE_ID as failed"
    fi
    log "powering off"
    systemctl --no-block poweroff
    exit "$rc"
}

trap 'on_failure $?' ERR
# systemd's start timeout ends the service with SIGTERM: a failure too.
trap 'on_failure 143' TERM

# write_file MODE PATH: stdin to PATH.
write_file() {
    mkdir -p "$(dirname "$2")"
    cat >"$2"
    chmod "$1" "$2"
}

# write_secret SOURCE TARGET: a copy that nobody else can read, even briefly.
write_secret() {
    mkdir -p "$(dirname "$2")"
    (umask 077 && cat "$1" >"$2")
    chmod 0600 "$2"
}

load_settings() {
    # shellcheck source=/dev/null
    . "$SETTINGS"
    local name
    for name in BK_QUEUE BK_ARCH BK_FLEET BK_ROLE BK_REGION BK_AGENT_TOKEN_PARAMETER \
        BK_SSH_KEY_PARAMETER BK_SIGNING_KEY_PARAMETER BK_CACHE_BUCKET BK_CACHE_REGION \
        BK_CACHE_PUBLIC_KEY BK_AGENTS_PER_INSTANCE BK_ROOT_MODE BK_BOOTSTRAP_TAG \
        BK_READY_AT_TAG BK_BOOTSTRAP_COMPLETE BK_BOOTSTRAP_FAILED; do
        [[ -n "${!name:-}" ]] || die "$SETTINGS does not set $name"
    done
    # Counts go into the agent's config unquoted: they must be plain numbers.
    for name in BK_AGENTS_PER_INSTANCE BK_IDLE_TIMEOUT_SECONDS BK_MAX_UPTIME_SECONDS; do
        [[ "${!name:-0}" =~ ^[0-9]+$ ]] || die "$SETTINGS sets $name to a non-number"
    done
}

# The IMDSv2 session token goes to curl on stdin, not on its command line.
imds_get() {
    local token
    token=$(curl -fsS --retry 5 --retry-connrefused --max-time 5 -X PUT \
        -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/api/token")
    printf 'X-aws-ec2-metadata-token: %s\n' "$token" |
        curl -fsS --retry 5 --retry-connrefused --max-time 5 -H @- "$IMDS/$1"
}

load_instance_id() {
    INSTANCE_ID=$(imds_get meta-data/instance-id)
    [[ "$INSTANCE_ID" =~ ^i-[0-9a-f]+$ ]] || die "the metadata service returned an odd instance id"
}

check_arch() {
    local machine arch
    machine=$(uname -m)
    case "$machine" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch=$machine ;;
    esac
    [[ "$arch" == "$BK_ARCH" ]] ||
        die "this is a $machine instance but queue $BK_QUEUE runs on $BK_ARCH: check the launch template's AMI and instance types"
}

# cloud-init goes on when apt fails (a mirror down): catch it here, not in
# the first job that needs git.
check_packages() {
    local command
    for command in curl gpg jq yq git git-lfs unzip; do
        command -v "$command" >/dev/null ||
            die "$command is missing: the package install failed, see /var/log/cloud-init-output.log"
    done
}

# Ubuntu 24.04 has no awscli package: install AWS's own build (v2) in boot 1,
# so that the tags of a failed boot 1 can be written too.
install_aws_cli() {
    if command -v aws >/dev/null; then
        return 0
    fi
    local dir="$WORK/awscli"
    mkdir -p "$dir"
    curl -fsSL --proto '=https' --tlsv1.2 --retry 5 -o "$dir/awscliv2.zip" \
        "https://awscli.amazonaws.com/awscli-exe-linux-$(uname -m).zip"
    unzip -q -o "$dir/awscliv2.zip" -d "$dir"
    "$dir/aws/install" --update --install-dir "$ROOT/usr/local/aws-cli" --bin-dir "$ROOT/usr/local/bin"
    rm -rf "$dir"
}

configure_overlayroot() {
    "${APT_GET[@]}" install --no-install-recommends overlayroot
    # 75%: the default tmpfs size filled up on large builds.
    printf 'overlayroot="tmpfs:tmpfs_size=75%%"\n' | write_file 0644 "$ROOT/etc/overlayroot.local.conf"
    # Ubuntu cloud images boot without an initramfs when this is set, and
    # overlayroot lives in the initramfs.
    local grub_partuuid="$ROOT/etc/default/grub.d/40-force-partuuid.cfg"
    if [[ -f "$grub_partuuid" ]]; then
        sed -i 's/^GRUB_FORCE_PARTUUID=/#&/' "$grub_partuuid"
    fi
    update-grub
    update-initramfs -u
}

enable_bootstrap_service() {
    systemctl enable buildkite-bootstrap.service
}

# cloud-init's power_state reboots only when this marker exists, so a failed
# boot 1 powers off instead of rebooting.
request_reboot() {
    mkdir -p "$WORK"
    touch "$REBOOT_MARKER"
}

# --no-block: cloud-init's runcmd must not wait for the whole bootstrap. Its
# package install has run by now (runcmd comes after it in cloud-final).
start_bootstrap_service() {
    systemctl start --no-block buildkite-bootstrap.service
}

check_root_filesystem() {
    local root_type
    root_type=$(awk '$2 == "/" { type = $3 } END { print type }' "$ROOT/proc/mounts")
    [[ "$root_type" == overlay ]] ||
        die "root filesystem is ${root_type:-unknown}, not the overlayroot tmpfs: see /etc/overlayroot.local.conf and update-initramfs"
}

# read_secret PARAMETER FILE: the value goes from the AWS CLI straight into a
# file in a directory only root can read; it is never on a command line.
read_secret() {
    (umask 077 && aws ssm get-parameter --region "$BK_REGION" --with-decryption \
        --name "$1" --query Parameter.Value --output text >"$WORK/$2")
    [[ -s "$WORK/$2" ]] || die "SSM parameter $1 is empty"
}

read_secrets() {
    mkdir -p "$WORK"
    chmod 0700 "$WORK"
    read_secret "$BK_AGENT_TOKEN_PARAMETER" agent-token
    read_secret "$BK_SSH_KEY_PARAMETER" ssh-key
    read_secret "$BK_SIGNING_KEY_PARAMETER" signing-key
}

install_nix() {
    local extra=()
    if [[ "${BK_NIX_DETERMINATE:-false}" == true ]]; then
        extra=(--determinate)
    fi
    curl -fsSL --proto '=https' --tlsv1.2 --retry 5 -o "$WORK/nix-installer.sh" "$NIX_INSTALLER_URL"
    sh "$WORK/nix-installer.sh" install linux --no-confirm "${extra[@]}" \
        --extra-conf "trusted-users = root buildkite-agent @nix-users $DEFAULT_USER"
}

configure_nix_cache() {
    local cache="s3://$BK_CACHE_BUCKET?region=$BK_CACHE_REGION"
    write_secret "$WORK/signing-key" "$ROOT/etc/nix/cache-priv-key.pem"
    install -m 0755 "$LIB/upload-to-cache.sh" "$ROOT/etc/nix/upload-to-cache.sh"
    # nix.custom.conf is the installer's include for local settings.
    {
        printf '\n# S3 binary cache of fleet %s (buildkite-bootstrap)\n' "$BK_FLEET"
        printf 'extra-substituters = %s\n' "$cache"
        printf 'trusted-public-keys = %s %s\n' "$NIXOS_CACHE_KEY" "$BK_CACHE_PUBLIC_KEY"
        printf 'post-build-hook = /etc/nix/upload-to-cache.sh\n'
        printf 'accept-flake-config = true\n'
        printf 'download-buffer-size = 1073741824\n'
    } >>"$ROOT/etc/nix/nix.custom.conf"
    systemctl restart nix-daemon.service
}

# With a pinned version, pick the repository's build of it (3.87.0 -> 3.87.0-5805).
agent_package() {
    if [[ -z "${BK_AGENT_VERSION:-}" ]]; then
        printf 'buildkite-agent\n'
        return 0
    fi
    local version
    # awk reads all its input: exiting early would fail apt-cache with SIGPIPE.
    version=$(apt-cache madison buildkite-agent |
        awk -F' *[|] *' -v want="$BK_AGENT_VERSION" \
            '!found && ($2 == want || index($2, want "-") == 1) { print $2; found = 1 }')
    [[ -n "$version" ]] || die "buildkite-agent $BK_AGENT_VERSION is not in apt.buildkite.com"
    printf 'buildkite-agent=%s\n' "$version"
}

install_agent() {
    local keyring="$ROOT$BUILDKITE_KEYRING"
    curl -fsSL --proto '=https' --tlsv1.2 --retry 5 \
        "https://keys.openpgp.org/vks/v1/by-fingerprint/$BUILDKITE_KEY_FINGERPRINT" |
        gpg --dearmor | write_file 0644 "$keyring"
    gpg --show-keys --with-colons "$keyring" | grep "^fpr:*:$BUILDKITE_KEY_FINGERPRINT:" >/dev/null ||
        die "the downloaded Buildkite signing key is not $BUILDKITE_KEY_FINGERPRINT"
    printf 'deb [signed-by=%s] https://apt.buildkite.com/buildkite-agent stable main\n' "$BUILDKITE_KEYRING" |
        write_file 0644 "$ROOT/etc/apt/sources.list.d/buildkite-agent.list"
    "${APT_GET[@]}" update
    local package
    package=$(agent_package)
    "${APT_GET[@]}" install "$package"
}

configure_nix_users() {
    groupadd -f nix-users
    usermod -aG nix-users buildkite-agent
    if id "$DEFAULT_USER" >/dev/null 2>&1; then
        usermod -aG nix-users "$DEFAULT_USER"
    fi
    chgrp nix-users "$ROOT/nix/var/nix/daemon-socket"
    chmod 770 "$ROOT/nix/var/nix/daemon-socket"
}

install_ssh_key() {
    local ssh_dir="$AGENT_HOME/.ssh"
    mkdir -p "$ssh_dir"
    chmod 0700 "$ssh_dir"
    write_secret "$WORK/ssh-key" "$ssh_dir/id_ed25519"
    printf 'Host github.com\n  IdentityFile ~/.ssh/id_ed25519\n  StrictHostKeyChecking accept-new\n' |
        write_file 0644 "$ssh_dir/config"
    chown -R buildkite-agent:buildkite-agent "$ssh_dir"
}

# The token is read into memory and written with printf (a builtin): it never
# appears in a process's arguments.
write_agent_config() {
    local token config="$ROOT/etc/buildkite-agent/buildkite-agent.cfg"
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
    } | write_file 0640 "$config"
    chgrp buildkite-agent "$config"
}

install_agent_dropins() {
    install -D -m 0644 "$LIB/agent-environment.conf" "$AGENT_DROPINS/environment.conf"
    install -D -m 0644 "$LIB/agent-lifecycle.conf" "$AGENT_DROPINS/lifecycle.conf"
}

# A bad token or config makes the agent exit at once: it must stay up a while.
start_agent() {
    systemctl daemon-reload
    systemctl enable buildkite-agent.service
    systemctl start buildkite-agent.service
    local check
    for check in 1 2 3 4; do
        sleep 5
        systemctl is-active --quiet buildkite-agent.service ||
            die "buildkite-agent is not running (check $check of 4): journalctl -u buildkite-agent"
    done
}

# A pool instance stops here instead of booting on: the bootstrap service
# runs when the scaler starts it.
start_park_service() {
    systemctl start --no-block buildkite-pool-park.service
}

# Snapshot blocks load lazily from S3 on their first read: read every file
# of the root filesystem once, so a started pool instance reads at full
# speed. Best effort: a file that vanishes mid-read only stays cold.
warm_volume() {
    find "$ROOT/" -xdev -type f -exec cat -- {} + >/dev/null 2>&1 || log "some files could not be read"
}

# The scaler's tag on a started pool instance, read from the instance
# metadata (InstanceMetadataTags): no permission needed, and none to read
# other instances. A missing tag means terminate.
on_exit_action() {
    imds_get "meta-data/tags/instance/$BK_ON_EXIT_TAG" 2>/dev/null || true
}

# Tagged first: a stop that fails ends in the ERR trap, which powers off,
# and a powered-off instance terminates (InstanceInitiatedShutdownBehavior).
stop_into_pool() {
    tag_instance "$BK_BOOTSTRAP_POOLED"
    aws ec2 stop-instances --region "$BK_REGION" --instance-ids "$INSTANCE_ID" >/dev/null
    log "stopping into the warm pool of $BK_QUEUE"
}

mark_complete() {
    rm -rf "$WORK"
    touch "$FLAG"
    tag_instance "$BK_BOOTSTRAP_COMPLETE" "Key=$BK_READY_AT_TAG,Value=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    log "complete: buildkite-agent is running"
}

prepare() {
    run_step load_settings
    run_step load_instance_id
    run_step check_packages
    run_step install_aws_cli
    run_step check_arch
    if [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        run_step configure_overlayroot
    fi
    run_step enable_bootstrap_service
    if [[ "$BK_ROLE" == pool ]]; then
        run_step start_park_service
    elif [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        run_step request_reboot
    else
        run_step start_bootstrap_service
    fi
}

park() {
    run_step load_settings
    run_step load_instance_id
    run_step warm_volume
    run_step stop_into_pool
}

# Only with overlayroot: its next boot is clean. An EBS root keeps what the
# jobs wrote, so such an instance always terminates.
release() {
    run_step load_settings
    if [[ "$BK_ROLE" != pool || "$BK_ROOT_MODE" != overlayroot ]]; then
        exit 1
    fi
    run_step load_instance_id
    local action
    action=$(on_exit_action)
    if [[ "$action" != "$BK_ON_EXIT_STOP" ]]; then
        log "the warm pool of $BK_QUEUE needs no instance (on-exit=${action:-unset}): terminating"
        exit 1
    fi
    run_step stop_into_pool
}

run() {
    run_step load_settings
    run_step load_instance_id
    run_step check_arch
    if [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        run_step check_root_filesystem
    fi
    run_step read_secrets
    run_step install_nix
    run_step configure_nix_cache
    run_step install_agent
    run_step configure_nix_users
    run_step install_ssh_key
    run_step write_agent_config
    run_step install_agent_dropins
    run_step start_agent
    run_step mark_complete
}

main() {
    case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    park) park ;;
    release) release ;;
    *)
        printf 'usage: %s prepare|run|park|release\n' "$0" >&2
        exit 2
        ;;
    esac
}

main "$@"
