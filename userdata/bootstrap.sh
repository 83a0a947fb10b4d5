#!/usr/bin/env bash
# Bootstrap of one Buildkite agent instance, /usr/local/sbin/buildkite-bootstrap.
#
#   install   all machine-wide work, no secrets, nothing instance-specific:
#             apt packages, AWS CLI, Nix with the cache configuration (no
#             signing key), buildkite-agent, units and scripts, and for
#             overlayroot the initramfs and GRUB. The stock AMI runs it at
#             boot; an image bake runs the very same function.
#   prepare   cloud-init's runcmd, once per instance. A baked image (the
#             marker /etc/buildkite-bootstrap/image) only refreshes the scripts and
#             starts the bootstrap service; the stock AMI runs `install`,
#             then reboots into overlayroot or starts the service (ebs). A
#             warm-pool instance's first boot starts the park service instead.
#   run       buildkite-bootstrap.service, every boot: secrets from SSM,
#             agent config, agent start, tag complete. Same on both paths.
#   park      buildkite-pool-park.service, a warm-pool instance's first boot
#             after cloud-init: read the volume once, tag bootstrap=pooled,
#             stop (not terminate). Its start runs `run` only.
#   release   agent-exited.sh, once the agent exited for good: a pool
#             instance stops back into its pool when the scaler's on-exit tag
#             says so (exit 0); exit 1 tells the caller to power off.
#
# Image bake interface (the Image Builder component):
#   1. write the files where the cloud-config's write_files puts them;
#   2. write /etc/buildkite-bootstrap/settings.env with the install settings
#      (INSTALL_SETTINGS below, BK_AGENT_VERSION a major version or an exact
#      release, plus BK_NIX_TRUST_JOBS);
#   3. run `buildkite-bootstrap install`. It fails if it finds a secret or a
#      completed bootstrap on the disk; it exits non-zero and never powers
#      off or tags (only `prepare` and `run` do);
#   4. write the marker: key=value lines, image_version, agent_version and
#      nix_version at least (the console shows them at each baked boot).
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
IMAGE_MARKER="$ROOT/etc/buildkite-bootstrap/image"
LIB="$ROOT/usr/local/lib/buildkite-bootstrap"
WORK="$ROOT/run/buildkite-bootstrap"
FLAG="$ROOT/var/lib/buildkite-bootstrap-complete"
REBOOT_MARKER="$WORK/reboot-requested"
UNITS="$ROOT/etc/systemd/system"
AGENT_DROPINS="$UNITS/buildkite-agent.service.d"
AGENT_HOME="$ROOT/var/lib/buildkite-agent"
AGENT_CONFIG="$ROOT/etc/buildkite-agent/buildkite-agent.cfg"
SIGNING_KEY="$ROOT/etc/nix/cache-priv-key.pem"
# The installer's profile: nix is on login shells' PATH only, not the service's.
NIX="$ROOT/nix/var/nix/profiles/default/bin/nix"
# What an EC2 tag value may not hold (letters, digits, space, + - = . _ : / @ may be).
TAG_VALUE_DISALLOWED='[^A-Za-z0-9 +=._:/@-]'
# The overlayroot tmpfs that holds every write to /.
OVERLAY_UPPER="$ROOT/media/root-rw"
IMDS="http://169.254.169.254/latest"
NIX_INSTALLER_URL="https://install.determinate.systems/nix/tag"
BUILDKITE_KEY_FINGERPRINT="32A37959C2FA5C3C99EFBC32A79206696452D198"
BUILDKITE_KEYRING="/usr/share/keyrings/buildkite-agent-archive-keyring.gpg"
NIXOS_CACHE_KEY="cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
DEFAULT_USER="ubuntu"
# sudo: the build-space hook drains the agent through it (drain-agent.sh).
PACKAGES=(curl ca-certificates gpg dbus jq yq git git-lfs git-filter-repo pciutils openssl unzip sudo)
# The dpkg frontend lock is waited for; the lists and archives locks are not
# (see apt_get), and apt-daily may hold them on a fresh instance.
APT_GET=(apt-get -q -y -o DPkg::Lock::Timeout=600)
APT_LOCK_RETRIES=60
# The CLI retries each call itself; these are for an outage longer than its retries.
TAG_CHECK_ATTEMPTS=3
INSTALL_SETTINGS=(BK_ROOT_MODE BK_NIX_INSTALLER_VERSION BK_NIX_DETERMINATE BK_AGENT_VERSION BK_CACHE_BUCKET
    BK_CACHE_REGION BK_CACHE_PUBLIC_KEY)
BOOT_SETTINGS=(BK_QUEUE BK_ARCH BK_FLEET BK_ROLE BK_REGION BK_AGENT_TOKEN_PARAMETER
    BK_SSH_KEY_PARAMETER BK_SIGNING_KEY_PARAMETER BK_AGENTS_PER_INSTANCE BK_BOOTSTRAP_TAG
    BK_READY_AT_TAG BK_AGENT_VERSION_TAG BK_NIX_VERSION_TAG BK_BOOTSTRAP_COMPLETE BK_BOOTSTRAP_FAILED)

export DEBIAN_FRONTEND=noninteractive
# Ubuntu's needrestart runs after each apt-get: it must neither wait for an
# answer nor restart services (cloud-init's, the bake's SSM agent) mid-boot.
export NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l
umask 022

STEP="start"
# The last die message: the failure line repeats it, last on the console.
REASON=""
# Set once start_agent has started the agent: from then on its exit may be a retirement.
AGENT_STARTED=false
INSTANCE_ID=""
POWER_OFF_ON_FAILURE=false
# A warm-pool instance's first boot: it parks in the pool instead of booting on.
PARK=false

log() {
    printf 'buildkite-bootstrap: %s\n' "$*" >&2
}

die() {
    log "$*"
    REASON="$*"
    return 1
}

run_step() {
    STEP=$1
    log "step $STEP"
    "$STEP"
}

# refused ERRORS: the AWS CLI's errors in the file ERRORS are EC2's refusal of
# the call; a network error or a throttle is not one.
refused() {
    grep -qE 'UnauthorizedOperation|AccessDenied' "$1"
}

# last_error ERRORS: the last line of the AWS CLI's errors, for a failure line.
last_error() {
    awk 'NF { last = $0 } END { print last }' "$1"
}

# tag_instance STATE [TAG...]: a refused call is named on the console, so an
# IAM grant that does not apply is found from the reaper's log.
tag_instance() {
    local state=$1 errors="$ROOT/var/tmp/buildkite-bootstrap-create-tags.err"
    shift
    mkdir -p "$(dirname "$errors")"
    if aws ec2 create-tags --region "$BK_REGION" --resources "$INSTANCE_ID" \
        --tags "Key=$BK_BOOTSTRAP_TAG,Value=$state" "$@" 2>"$errors"; then
        rm -f "$errors"
        return 0
    fi
    cat "$errors" >&2
    if refused "$errors"; then
        die "REFUSED: ec2:CreateTags on $INSTANCE_ID ($BK_BOOTSTRAP_TAG=$state): check the agent role's CreateTags grant"
    fi
    die "could not tag $INSTANCE_ID $BK_BOOTSTRAP_TAG=$state: $(last_error "$errors")"
}

# ERR trap: report the failing step, tag the instance failed, power off.
on_failure() {
    local rc=$1 reason=$REASON
    # A failure inside $(...) is reported once, by the shell that waits for it.
    if ((BASH_SUBSHELL > 0)); then
        exit "$rc"
    fi
    trap - ERR TERM
    set +eu
    if [[ "$POWER_OFF_ON_FAILURE" != true ]]; then
        log "FAILED step=$STEP exit=$rc${reason:+: $reason}"
        exit "$rc"
    fi
    if [[ "$AGENT_STARTED" == true ]] && agent_retired; then
        log "buildkite-agent exited 0 during step $STEP: it retired (a drain, the idle timeout or max uptime), which is no failure; it powers the instance off"
        exit 0
    fi
    if [[ -n "$INSTANCE_ID" && -n "${BK_REGION:-}" ]] && command -v aws >/dev/null; then
        tag_instance "$BK_BOOTSTRAP_FAILED" || log "could not tag $INSTANCE_ID as failed"
    fi
    # Last before the power-off, whose own lines follow: the reaper's console
    # tail leads with this line when they push it out.
    log "FAILED step=$STEP exit=$rc${reason:+: $reason}"
    # Power-off stops buildkite-agent gracefully (SIGTERM): a job it took
    # finishes, and it takes no more.
    log "powering off"
    systemctl --no-block poweroff
    exit "$rc"
}

# True when the agent's last run ended with exit status 0: agent-exited.sh, which
# then powers off (or returns to the pool) itself, leaves this mark.
agent_retired() {
    [[ -e "$ROOT/run/buildkite-agent-retired" ]]
}

trap 'on_failure $?' ERR
# A start timeout (systemd, or runcmd's `timeout`) ends us with SIGTERM: a failure too.
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

# require_settings NAME...: every one set and non-empty.
require_settings() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || die "$SETTINGS does not set $name"
    done
}

read_settings() {
    # shellcheck source=/dev/null
    . "$SETTINGS"
}

load_install_settings() {
    read_settings
    require_settings "${INSTALL_SETTINGS[@]}"
}

load_settings() {
    read_settings
    require_settings "${INSTALL_SETTINGS[@]}" "${BOOT_SETTINGS[@]}"
    # Counts go into the agent's config unquoted: they must be plain numbers.
    local name
    for name in BK_AGENTS_PER_INSTANCE BK_IDLE_TIMEOUT_SECONDS BK_MAX_UPTIME_SECONDS; do
        [[ "${!name:-0}" =~ ^[0-9]+$ ]] || die "$SETTINGS sets $name to a non-number"
    done
}

# The IMDSv2 session token goes to curl on stdin, not on its command line.
imds_get() {
    local token
    token=$(curl -q -fsS --retry 5 --retry-connrefused --max-time 5 -X PUT \
        -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/api/token")
    printf 'X-aws-ec2-metadata-token: %s\n' "$token" |
        curl -q -fsS --retry 5 --retry-connrefused --max-time 5 -H @- "$IMDS/$1"
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

# ---------------------------------------------------------------- install

# apt_get ARGS...: apt-get, retried while another apt (apt-daily at first
# boot) holds a lock that DPkg::Lock::Timeout does not cover.
apt_get() {
    local attempt errors="$ROOT/var/tmp/buildkite-bootstrap-apt.err"
    mkdir -p "$(dirname "$errors")"
    for ((attempt = 1; ; attempt++)); do
        if "${APT_GET[@]}" "$@" 2>"$errors"; then
            cat "$errors" >&2
            rm -f "$errors"
            return 0
        fi
        cat "$errors" >&2
        if ((attempt >= APT_LOCK_RETRIES)) || ! grep -q 'Could not get lock' "$errors"; then
            rm -f "$errors"
            return 1
        fi
        log "apt-get $1: another apt holds a lock, retry $attempt of $APT_LOCK_RETRIES in 10 s"
        sleep 10
    done
}

# Agents live for hours and images are rebuilt weekly: apt-daily would only
# compete for the apt locks during the bootstrap and for CPU during builds.
stop_apt_timers() {
    systemctl disable --now apt-daily.timer apt-daily-upgrade.timer
}

install_packages() {
    local packages=("${PACKAGES[@]}")
    if [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        packages+=(overlayroot)
    fi
    apt_get update
    apt_get install --no-install-recommends "${packages[@]}"
}

# Ubuntu 24.04 has no awscli package: AWS's own build (v2). Unpacked under
# /var/tmp: /run is noexec after an initramfs boot.
install_aws_cli() {
    if command -v aws >/dev/null; then
        return 0
    fi
    local dir="$ROOT/var/tmp/buildkite-bootstrap-awscli"
    mkdir -p "$dir"
    curl -q -fsSL --proto '=https' --tlsv1.2 --retry 5 -o "$dir/awscliv2.zip" \
        "https://awscli.amazonaws.com/awscli-exe-linux-$(uname -m).zip"
    unzip -q -o "$dir/awscliv2.zip" -d "$dir"
    "$dir/aws/install" --update --install-dir "$ROOT/usr/local/aws-cli" --bin-dir "$ROOT/usr/local/bin"
    rm -rf "$dir"
}

# The installer is pinned (its /nix/tag/<version> URL), so a new release
# cannot change every new agent. Since v3.13.0 it installs Determinate Nix
# unless told --prefer-upstream-nix.
install_nix() {
    local flavour=--prefer-upstream-nix trusted="root $DEFAULT_USER" script="$ROOT/var/tmp/nix-installer.sh"
    if [[ "$BK_NIX_DETERMINATE" == true ]]; then
        flavour=--determinate
    fi
    # Opt-in only: a trusted user can run any command as root through Nix.
    if [[ "${BK_NIX_TRUST_JOBS:-false}" == true ]]; then
        trusted+=" buildkite-agent @nix-users"
    fi
    mkdir -p "$(dirname "$script")"
    curl -q -fsSL --proto '=https' --tlsv1.2 --retry 5 -o "$script" "$NIX_INSTALLER_URL/$BK_NIX_INSTALLER_VERSION"
    sh "$script" install linux --no-confirm "$flavour" --extra-conf "trusted-users = $trusted"
    rm -f "$script"
}

configure_nix_cache() {
    local cache="s3://$BK_CACHE_BUCKET?region=$BK_CACHE_REGION"
    # nix.custom.conf is the installer's include for local settings.
    {
        printf '\n# S3 binary cache (buildkite-bootstrap)\n'
        printf 'extra-substituters = %s\n' "$cache"
        printf 'trusted-public-keys = %s %s\n' "$NIXOS_CACHE_KEY" "$BK_CACHE_PUBLIC_KEY"
        printf 'post-build-hook = /etc/nix/upload-to-cache.sh\n'
        printf 'download-buffer-size = 1073741824\n'
        if [[ "${BK_NIX_TRUST_JOBS:-false}" == true ]]; then
            printf 'accept-flake-config = true\n'
        fi
    } >>"$ROOT/etc/nix/nix.custom.conf"
    systemctl restart nix-daemon.service
}

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

configure_nix_users() {
    groupadd -f nix-users
    usermod -aG nix-users buildkite-agent
    if id "$DEFAULT_USER" >/dev/null 2>&1; then
        usermod -aG nix-users "$DEFAULT_USER"
    fi
    chgrp nix-users "$ROOT/nix/var/nix/daemon-socket"
    chmod 770 "$ROOT/nix/var/nix/daemon-socket"
}

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

# The initramfs overlayroot is installed here and takes effect at the next
# boot: the stock path's reboot, or every boot of a baked image.
configure_overlayroot() {
    # No tmpfs_size: overlayroot ignores it. `run` applies BK_ROOT_TMPFS_SIZE.
    printf 'overlayroot="tmpfs"\n' | write_file 0644 "$ROOT/etc/overlayroot.local.conf"
    # Ubuntu cloud images boot without an initramfs when this is set, and
    # overlayroot lives in the initramfs.
    local grub_partuuid="$ROOT/etc/default/grub.d/40-force-partuuid.cfg"
    if [[ -f "$grub_partuuid" ]]; then
        sed -i 's/^GRUB_FORCE_PARTUUID=/#&/' "$grub_partuuid"
    fi
    update-grub
    update-initramfs -u
}

# An image must hold no secret and no instance's state: refuse to bake one.
check_no_secrets() {
    local path found=()
    for path in "$SIGNING_KEY" "$AGENT_HOME/.ssh/id_ed25519" "$WORK/agent-token" "$WORK/ssh-key" \
        "$WORK/signing-key" "$FLAG"; do
        if [[ -e "$path" ]]; then
            found+=("$path")
        fi
    done
    # The package's own config holds the placeholder token "xxx".
    if [[ -f "$AGENT_CONFIG" ]] && grep -E '^token=' "$AGENT_CONFIG" | grep -qvxE 'token="?xxx"?'; then
        found+=("$AGENT_CONFIG")
    fi
    ((${#found[@]} == 0)) || die "secrets or instance state on this disk, refusing to go on: ${found[*]}"
}

install_all() {
    run_step stop_apt_timers
    run_step install_packages
    run_step install_aws_cli
    run_step install_nix
    run_step configure_nix_cache
    run_step install_agent
    run_step configure_nix_users
    run_step install_files
    if [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        run_step configure_overlayroot
    fi
    run_step check_no_secrets
}

# ---------------------------------------------------------------- prepare

# image_value KEY: a value of the marker.
image_value() {
    awk -F= -v key="$1" '$1 == key { sub(/^[^=]*=/, ""); print }' "$IMAGE_MARKER"
}

# The type of the root filesystem: overlay when overlayroot is active.
root_fs_type() {
    awk '$2 == "/" { type = $3 } END { print type }' "$ROOT/proc/mounts"
}

# A baked image's root mode is in its initramfs: it cannot follow the
# settings. What the image booted into tells it (the marker need not).
check_image() {
    local mode=ebs
    if [[ "$(root_fs_type)" == overlay ]]; then
        mode=overlayroot
    fi
    log "baked image $(image_value image_version): buildkite-agent $(image_value agent_version), nix $(image_value nix_version), root $mode"
    [[ "$mode" == "$BK_ROOT_MODE" ]] ||
        die "this image boots with root mode $mode but the fleet runs $BK_ROOT_MODE: rebuild the image"
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

# --no-block: cloud-init's runcmd must not wait for the per-boot steps.
start_bootstrap_service() {
    systemctl start --no-block buildkite-bootstrap.service
}

# ---------------------------------------------------------------- run

check_root_filesystem() {
    local root_type
    root_type=$(root_fs_type)
    [[ "$root_type" == overlay ]] ||
        die "root filesystem is ${root_type:-unknown}, not the overlayroot tmpfs: see /etc/overlayroot.local.conf and update-initramfs"
}

# overlayroot mounts its tmpfs with no size (half of RAM, whatever
# overlayroot.conf says): apply the configured size before any build.
apply_build_space() {
    require_settings BK_ROOT_TMPFS_SIZE
    mount -o "remount,size=$BK_ROOT_TMPFS_SIZE" "$OVERLAY_UPPER"
    log "build space on the overlayroot tmpfs (size=$BK_ROOT_TMPFS_SIZE):"
    df -h "$OVERLAY_UPPER" >&2
}

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

# Read by the cache uploader (as root), never by the nix daemon or a job.
install_signing_key() {
    write_secret "$WORK/signing-key" "$SIGNING_KEY"
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

# The park service waits for cloud-init to finish (its per-instance modules
# must not run again at the start), then runs `park`.
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

# tag_value TEXT: TEXT as an EC2 tag value (disallowed characters as _, at
# most 256), or "unknown" when empty.
tag_value() {
    local value=${1//$TAG_VALUE_DISALLOWED/_}
    value=${value:0:256}
    printf '%s\n' "${value:-unknown}"
}

# The versions this instance runs, as the bake's marker reads them ("buildkite-agent
# version 3.87.0, build 5805" -> 3.87.0; "nix (Nix) 2.28.3" -> 2.28.3). A version
# that cannot be read is tagged "unknown": it must not fail a boot that got this far.
agent_version() {
    local output
    output=$(buildkite-agent --version) || output=""
    if [[ "$output" =~ version\ ([0-9][^,[:space:]]*) ]]; then
        output=${BASH_REMATCH[1]}
    fi
    tag_value "${output%%$'\n'*}"
}

nix_version() {
    local output
    output=$("$NIX" --version) || output=""
    output=${output%%$'\n'*}
    tag_value "${output##* }"
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

# ---------------------------------------------------------------- modes

mode_install() {
    run_step load_install_settings
    install_all
}

mode_prepare() {
    POWER_OFF_ON_FAILURE=true
    run_step load_settings
    run_step load_instance_id
    run_step check_arch
    if [[ "$BK_ROLE" == pool ]]; then
        run_step read_pool_state
    fi
    if [[ -f "$IMAGE_MARKER" ]]; then
        run_step check_image
        run_step install_files
        if [[ "$PARK" == true ]]; then
            # Its start boots on through the bootstrap service.
            run_step enable_bootstrap_service
            run_step start_park_service
        else
            run_step start_bootstrap_service
        fi
        return 0
    fi
    install_all
    run_step enable_bootstrap_service
    if [[ "$PARK" == true ]]; then
        run_step start_park_service
    elif [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        run_step request_reboot
    else
        run_step start_bootstrap_service
    fi
}

park() {
    POWER_OFF_ON_FAILURE=true
    run_step load_settings
    run_step load_instance_id
    run_step warm_volume
    run_step stop_into_pool
}

# Only with overlayroot: its next boot is clean. An EBS root keeps what the
# jobs wrote, so such an instance always terminates.
release() {
    POWER_OFF_ON_FAILURE=true
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

mode_run() {
    POWER_OFF_ON_FAILURE=true
    run_step load_settings
    run_step load_instance_id
    run_step check_arch
    if [[ "$BK_ROOT_MODE" == overlayroot ]]; then
        run_step check_root_filesystem
        run_step apply_build_space
    fi
    run_step check_tag_permission
    run_step read_secrets
    run_step install_signing_key
    run_step install_ssh_key
    run_step write_agent_config
    run_step start_agent
    run_step mark_complete
}

main() {
    case "${1:-}" in
    install) mode_install ;;
    prepare) mode_prepare ;;
    run) mode_run ;;
    park) park ;;
    release) release ;;
    *)
        printf 'usage: %s install|prepare|run|park|release\n' "$0" >&2
        exit 2
        ;;
    esac
}

main "$@"
