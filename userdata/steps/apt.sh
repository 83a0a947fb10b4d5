#!/usr/bin/env bash
# Install steps: the machine's apt packages (apt_get is in lib/common.sh).
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# sudo: the build-space hook drains the agent through it (drain-agent.sh).
PACKAGES=(curl ca-certificates gpg dbus jq yq git git-lfs git-filter-repo pciutils openssl unzip sudo)

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
