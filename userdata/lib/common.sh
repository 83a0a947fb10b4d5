#!/usr/bin/env bash
# The instance scripts' shared library, /usr/local/lib/buildkite-bootstrap/lib/common.sh,
# sourced first by every script root runs (the bootstrap and its steps, the agent's exit
# handler, the drain, the spot watcher, the cache uploader). It defines functions and
# paths and runs nothing: no shell options, no traps (each script sets its own).
#
# Every absolute path is under $ROOT, so tests run the scripts against a temporary
# directory with stub commands on PATH. Never add `set -x`: secrets pass through here.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

ROOT=${BOOTSTRAP_ROOT:-}
SETTINGS="$ROOT/etc/buildkite-bootstrap/settings.env"
LIB="$ROOT/usr/local/lib/buildkite-bootstrap"
WORK="$ROOT/run/buildkite-bootstrap"
FLAG="$ROOT/var/lib/buildkite-bootstrap-complete"
AGENT_CONFIG="$ROOT/etc/buildkite-agent/buildkite-agent.cfg"
# The installer's profile: nix is on login shells' PATH only, not the services'.
NIX="$ROOT/nix/var/nix/profiles/default/bin/nix"
# Left by agent-exited.sh when the agent exits 0 (see agent_retired).
RETIRED="$ROOT/run/buildkite-agent-retired"
# The bootstrap's IMDS calls retry; the spot watcher's poll sets its own, silent ones.
IMDS="http://169.254.169.254/latest"
IMDS_CURL=(curl -q -fsS --retry 5 --retry-connrefused --max-time 5)
# What an EC2 tag value may not hold (letters, digits, space, + - = . _ : / @ may be).
TAG_VALUE_DISALLOWED='[^A-Za-z0-9 +=._:/@-]'
LOG_TAG=buildkite-bootstrap
# The dpkg frontend lock is waited for; the lists and archives locks are not
# (see apt_get), and apt-daily may hold them on a fresh instance.
APT_GET=(apt-get -q -y -o DPkg::Lock::Timeout=600)
APT_LOCK_RETRIES=60

# The failing step and the last die message: the failure line names both.
STEP="start"
REASON=""
INSTANCE_ID=""

# ---------------------------------------------------------------- environment

# clean_environment NAME... -- SCRIPT [ARG...]: a script that root runs beside the jobs
# starts again with root's HOME, the unit's PATH (root wrote it), and only the NAMEs given
# that are set; it returns at once in the clean run. Why: agent-exited.sh runs with the
# agent unit's environment (HOME is the agent's, which jobs write), drain-agent.sh comes
# through sudo from a job's hook; botocore and nix's AWS SDK run a credential_process
# from $HOME/.aws/config and curl reads $HOME/.curlrc (every curl here also passes -q).
clean_environment() {
    if [[ "${BK_CLEAN_ENVIRONMENT:-}" == 1 ]]; then
        return 0
    fi
    local keep=(BK_CLEAN_ENVIRONMENT=1 "HOME=${BOOTSTRAP_ROOT:-}/root" "PATH=$PATH" LC_ALL=C)
    # BOOTSTRAP_ROOT: the tests' root; unset on an instance.
    set -- BOOTSTRAP_ROOT "$@"
    while [[ "$1" != -- ]]; do
        if [[ -n "${!1+set}" ]]; then
            keep+=("$1=${!1}")
        fi
        shift
    done
    shift
    exec env -i "${keep[@]}" "$BASH" "$@"
}

# ---------------------------------------------------------------- logging and failure

log() {
    printf '%s: %s\n' "$LOG_TAG" "$*" >&2
}

die() {
    log "$*"
    REASON="$*"
    return 1
}

# run_step STEP: one step of a mode; the failure line names the last one started.
run_step() {
    STEP=$1
    log "step $STEP"
    "$STEP"
}

# on_failure CODE, the bootstrap's ERR trap: the failing step on the console, and with
# POWER_OFF_ON_FAILURE the instance tagged failed and powered off (the reaper logs the
# console's tail before it terminates such an instance).
on_failure() {
    local rc=$1 reason=$REASON
    # A failure inside $(...) is reported once, by the shell that waits for it.
    if ((BASH_SUBSHELL > 0)); then
        exit "$rc"
    fi
    trap - ERR TERM
    set +eu
    if [[ "${POWER_OFF_ON_FAILURE:-false}" != true ]]; then
        log "FAILED step=$STEP exit=$rc${reason:+: $reason}"
        exit "$rc"
    fi
    if [[ "${AGENT_STARTED:-false}" == true ]] && agent_retired; then
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
# then powers off (or returns to the pool) itself, leaves this mark. systemd cannot
# tell by then: it unloads the inactive unit, and with it how its last run ended.
agent_retired() {
    [[ -e "$RETIRED" ]]
}

# ---------------------------------------------------------------- settings

read_settings() {
    # shellcheck source=/dev/null
    . "$SETTINGS"
}

# require_settings NAME...: every one set and non-empty.
require_settings() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || die "$SETTINGS does not set $name"
    done
}

# ---------------------------------------------------------------- files

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

# ---------------------------------------------------------------- the machine

# imds_get PATH: a document of the instance metadata service (IMDSv2). The session
# token goes to curl on stdin, not on its command line.
imds_get() {
    local token
    token=$("${IMDS_CURL[@]}" -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/api/token") ||
        return
    printf 'X-aws-ec2-metadata-token: %s\n' "$token" | "${IMDS_CURL[@]}" -H @- "$IMDS/$1"
}

# machine_arch: this machine as the fleet names architectures (x86_64, arm64).
machine_arch() {
    local machine
    machine=$(uname -m)
    case "$machine" in
    x86_64 | amd64) printf 'x86_64\n' ;;
    aarch64 | arm64) printf 'arm64\n' ;;
    *) printf '%s\n' "$machine" ;;
    esac
}

# The type of the root filesystem: overlay when overlayroot is active.
root_fs_type() {
    awk '$2 == "/" { type = $3 } END { print type }' "$ROOT/proc/mounts"
}

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

# ---------------------------------------------------------------- versions

# tag_value TEXT: TEXT as an EC2 tag value (disallowed characters as _, at
# most 256), or "unknown" when empty.
tag_value() {
    local value=${1//$TAG_VALUE_DISALLOWED/_}
    value=${value:0:256}
    printf '%s\n' "${value:-unknown}"
}

# The versions this machine runs, as tags and the image's marker record them
# ("buildkite-agent version 3.87.0, build 5805" -> 3.87.0; "nix (Nix) 2.28.3" ->
# 2.28.3); "unknown" when one cannot be read.
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

# ---------------------------------------------------------------- tags

# refused ERRORS: the AWS CLI's errors in the file ERRORS are EC2's refusal of
# the call; a network error or a throttle is not one.
refused() {
    grep -qE 'UnauthorizedOperation|AccessDenied' "$1"
}

# last_error ERRORS: the last line of the AWS CLI's errors, for a failure line.
last_error() {
    awk 'NF { last = $0 } END { print last }' "$1"
}

load_instance_id() {
    INSTANCE_ID=$(imds_get meta-data/instance-id)
    [[ "$INSTANCE_ID" =~ ^i-[0-9a-f]+$ ]] || die "the metadata service returned an odd instance id"
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
