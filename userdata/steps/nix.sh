#!/usr/bin/env bash
# Install steps: Nix, its S3 binary cache (no signing key: that comes at each
# boot, steps/secrets.sh), the nix-users group; and a bake's warm store.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

NIX_INSTALLER_URL="https://install.determinate.systems/nix/tag"
NIXOS_CACHE_KEY="cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
DEFAULT_USER="ubuntu"

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

configure_nix_users() {
    groupadd -f nix-users
    usermod -aG nix-users buildkite-agent
    if id "$DEFAULT_USER" >/dev/null 2>&1; then
        usermod -aG nix-users "$DEFAULT_USER"
    fi
    chgrp nix-users "$ROOT/nix/var/nix/daemon-socket"
    chmod 770 "$ROOT/nix/var/nix/daemon-socket"
}

# A bake's BK_WARM_NIX_PATHS (validated references, space-separated), substituted
# from the caches into the image's store so first builds start warm. No post-build
# hook: a bake has no signing key, so nothing it builds is uploaded.
warm_nix_store() {
    local ref refs
    read -ra refs <<<"${BK_WARM_NIX_PATHS:-}"
    for ref in "${refs[@]}"; do
        log "warming $ref"
        "$NIX" --extra-experimental-features "nix-command flakes" --option post-build-hook "" \
            build --no-link "$ref"
    done
}
