#!/usr/bin/env bash
# Secrets: read from SSM at each boot into files only root reads, and the scan
# that keeps every secret and instance state out of an image.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

SIGNING_KEY="$ROOT/etc/nix/cache-priv-key.pem"
AGENT_SSH_DIR="$ROOT/var/lib/buildkite-agent/.ssh"
# Where the boot puts secrets: none may exist on a disk that becomes an image.
SECRET_FILES=("$SIGNING_KEY" "$AGENT_SSH_DIR/id_ed25519" "$WORK/agent-token" "$WORK/ssh-key" "$WORK/signing-key"
    "$ROOT/root/.aws/credentials" "$FLAG")
# What the install and a bake write, and home directories, searched for key material.
SCANNED_DIRS=(etc/nix etc/buildkite-agent etc/buildkite-bootstrap usr/local/lib/buildkite-bootstrap
    var/lib/buildkite-agent root home)
# [ ] rather than a space: the user-data is checked to hold no key's header.
PRIVATE_KEY='-----BEGIN [A-Z ]*PRIVATE[ ]KEY-----'
# A Nix signing key is name:base64 of 64 bytes (a public key is 32 bytes).
NIX_SECRET_KEY='[A-Za-z0-9._-]+:[A-Za-z0-9+/]{86}=='

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
    mkdir -p "$AGENT_SSH_DIR"
    chmod 0700 "$AGENT_SSH_DIR"
    write_secret "$WORK/ssh-key" "$AGENT_SSH_DIR/id_ed25519"
    printf 'Host github.com\n  IdentityFile ~/.ssh/id_ed25519\n  StrictHostKeyChecking accept-new\n' |
        write_file 0644 "$AGENT_SSH_DIR/config"
    chown -R buildkite-agent:buildkite-agent "$AGENT_SSH_DIR"
}

# find_secrets: what on this disk is, or looks like, a secret or an instance's
# state, one per line. Nix's client cache (root's, after a warm bake) keeps narinfo
# signatures: public, and of a signing key's shape.
find_secrets() {
    local path dirs=()
    for path in "${SECRET_FILES[@]}"; do
        if [[ -e "$path" ]]; then
            printf '%s exists\n' "$path"
        fi
    done
    # The package's own config holds the placeholder token "xxx".
    if [[ -f "$AGENT_CONFIG" ]] && grep -E '^[[:space:]]*token[[:space:]]*=' "$AGENT_CONFIG" |
        grep -qvE '^[[:space:]]*token[[:space:]]*=[[:space:]]*"?(xxx)?"?[[:space:]]*$'; then
        printf '%s holds an agent token\n' "$AGENT_CONFIG"
    fi
    for path in "${SCANNED_DIRS[@]}"; do
        if [[ -d "$ROOT/$path" ]]; then
            dirs+=("$ROOT/$path")
        fi
    done
    ((${#dirs[@]} > 0)) || return 0
    find "${dirs[@]}" -type f -size -1025k -not -path '*/.cache/nix/*' -exec grep -lE -e "$PRIVATE_KEY" \
        -e "$NIX_SECRET_KEY" {} + | sed 's/$/ holds key material/' || true
}

# An image must hold no secret and no instance's state: refuse to bake one.
check_no_secrets() {
    local found
    found=$(find_secrets)
    [[ -z "$found" ]] || die "secrets or instance state on this disk, refusing to go on: ${found//$'\n'/; }"
}
