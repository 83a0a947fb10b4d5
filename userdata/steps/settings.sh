#!/usr/bin/env bash
# The settings a mode needs, from settings.env (rendered at launch, or written by a
# bake with the install-time values only), checked before any step uses them.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# BK_REGION: a bake reads its image build's ARN from its own tags.
INSTALL_SETTINGS=(BK_REGION BK_ROOT_MODE BK_NIX_INSTALLER_VERSION BK_NIX_DETERMINATE BK_AGENT_VERSION BK_CACHE_BUCKET
    BK_CACHE_REGION BK_CACHE_PUBLIC_KEY)
BOOT_SETTINGS=(BK_QUEUE BK_ARCH BK_FLEET BK_ROLE BK_REGION BK_AGENT_TOKEN_PARAMETER
    BK_SSH_KEY_PARAMETER BK_SIGNING_KEY_PARAMETER BK_AGENTS_PER_INSTANCE BK_BOOTSTRAP_TAG
    BK_READY_AT_TAG BK_AGENT_VERSION_TAG BK_NIX_VERSION_TAG BK_BOOTSTRAP_COMPLETE BK_BOOTSTRAP_FAILED)

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
