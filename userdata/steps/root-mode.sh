#!/usr/bin/env bash
# The root filesystem: overlayroot's initramfs and GRUB (install), its tmpfs
# checked and sized before any build (every boot). An EBS root needs neither.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# The overlayroot tmpfs that holds every write to /.
OVERLAY_UPPER="$ROOT/media/root-rw"

# The initramfs overlayroot is installed here and takes effect at the next
# boot: the stock path's reboot, or every boot of a baked image.
configure_overlayroot() {
    # No tmpfs_size: overlayroot ignores it. apply_build_space sets the size.
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
