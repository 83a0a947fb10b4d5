#!/usr/bin/env bash
# Turns a Debian 12 rootfs (mmdebstrap's output, argument 1) into the lab's
# baked agent image: what `buildkite-bootstrap bake` and the image bake
# leave on a disk, with stand-ins for buildkite-agent, Nix and the AWS
# endpoint, and a console that records everything. Runs on the host as root;
# commands that must run inside use chroot. Argument 2: this folder.
set -euo pipefail

ROOTFS=$1
GUEST=$2

in_root() {
    chroot "$ROOTFS" "$@"
}

put() { # put MODE SOURCE TARGET
    install -D -m "$1" "$GUEST/$2" "$ROOTFS$3"
}

system_settings() {
    printf 'lab\n' >"$ROOTFS/etc/hostname"
    printf 'LABEL=lab-root / ext4 defaults 0 1\n' >"$ROOTFS/etc/fstab"
    # A console login for debugging a lab VM by hand; the VM never listens on a network.
    in_root passwd -d root
    # cloud-init writes the DHCP configuration of the NIC it finds, as on EC2.
    printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' >"$ROOTFS/etc/network/interfaces"
    # The serial log is the whole record: the journal goes to it too.
    mkdir -p "$ROOTFS/etc/systemd/journald.conf.d"
    printf '[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=info\n' \
        >"$ROOTFS/etc/systemd/journald.conf.d/lab.conf"
    # What the bake's stop_apt_timers does.
    in_root systemctl disable apt-daily.timer apt-daily-upgrade.timer
    put 0644 cloud-init.cfg /etc/cloud/cloud.cfg.d/99-lab.cfg
}

# A small initrd: only the drivers the lab's virtual disk needs, and overlayroot's hook.
initramfs() {
    printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\noverlay\n' >>"$ROOTFS/etc/initramfs-tools/modules"
    sed -i 's/^MODULES=.*/MODULES=list/' "$ROOTFS/etc/initramfs-tools/initramfs.conf"
    in_root update-initramfs -u -k all
}

# What the bake installs, with stand-ins where the real thing needs the internet.
baked_state() {
    in_root useradd --system --create-home --home-dir /var/lib/buildkite-agent --shell /bin/bash buildkite-agent
    put 0755 buildkite-agent.py /usr/bin/buildkite-agent
    put 0644 buildkite-agent.service /lib/systemd/system/buildkite-agent.service
    mkdir -p "$ROOTFS/etc/buildkite-agent/hooks" "$ROOTFS/etc/buildkite-agent/plugins"
    printf 'token="xxx"\nname="%%hostname-%%spawn"\nbuild-path="/var/lib/buildkite-agent/builds"\n' \
        >"$ROOTFS/etc/buildkite-agent/buildkite-agent.cfg"
    put 0755 nix.sh /nix/var/nix/profiles/default/bin/nix
    put 0755 aws.sh /usr/local/bin/aws
    mkdir -p "$ROOTFS/etc/nix"
    printf 'image_version=lab\nagent_version=3.138.0\nnix_version=2.28.3\n' \
        >"$ROOTFS/etc/buildkite-bootstrap/image"
}

mkdir -p "$ROOTFS/etc/buildkite-bootstrap"
system_settings
initramfs
baked_state
