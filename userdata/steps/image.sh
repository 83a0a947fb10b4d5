#!/usr/bin/env bash
# The machine and its image: its architecture checked at each boot, a baked
# image against the fleet's settings; in the bake, its marker written and its
# machine id emptied.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# Its presence tells the one user-data that it booted a baked image.
IMAGE_MARKER="$ROOT/etc/buildkite-bootstrap/image"
MACHINE_ID="$ROOT/etc/machine-id"
# Image Builder tags its build instance with the image build's ARN.
IMAGE_ARN_TAG=Ec2ImageBuilderArn
IMAGE_ARN_PATTERN='^arn:[a-z-]+:imagebuilder:[a-z0-9-]+:[0-9]{12}:image/[^/]+/([0-9.]+)/([0-9]+)$'

# The AMI must be of the queue's architecture: the launch template's image and
# instance types were matched by configuration, not by EC2.
check_arch() {
    local arch
    arch=$(machine_arch)
    [[ "$arch" == "$BK_ARCH" ]] ||
        die "this is a $(uname -m) instance but queue $BK_QUEUE runs on $BK_ARCH: check the launch template's AMI and instance types"
}

# image_value KEY: a value of the marker.
image_value() {
    awk -F= -v key="$1" '$1 == key { sub(/^[^=]*=/, ""); print }' "$IMAGE_MARKER"
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

# The marker: key=value lines, read at each baked boot and by operators. The
# image build's ARN is the build instance's tag (ec2:DescribeTags on itself).
write_image_marker() {
    local arn agent nix
    arn=$(aws ec2 describe-tags --region "$BK_REGION" --filters "Name=resource-id,Values=$INSTANCE_ID" \
        "Name=key,Values=$IMAGE_ARN_TAG" --query 'Tags[0].Value' --output text)
    [[ "$arn" =~ $IMAGE_ARN_PATTERN ]] || die "the build instance's $IMAGE_ARN_TAG is not an image build ARN: $arn"
    agent=$(agent_version)
    nix=$(nix_version)
    [[ "$agent" != unknown && "$nix" != unknown ]] || die "versions not found: buildkite-agent $agent, nix $nix"
    printf 'image_version=%s/%s\nimage_arn=%s\nagent_version=%s\nnix_version=%s\n' \
        "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$arn" "$agent" "$nix" | write_file 0644 "$IMAGE_MARKER"
    log "marked the image: $(tr '\n' ' ' <"$IMAGE_MARKER")"
}

# Every instance of the image gets its own machine id, which systemd writes at a
# boot that finds the file empty; otherwise all share the build instance's
# (journald, DHCP client ids, dbus). Truncated, not deleted: some units fail on a
# missing file, and systemd would take a boot without it for a first boot.
empty_machine_id() {
    : | write_file 0444 "$MACHINE_ID"
}
