#!/usr/bin/env bash
# Install step: the AWS CLI. Ubuntu 24.04 has no awscli package: AWS's own
# build (v2). The bake's AWS component installs the same, where this would.
# A library: the scripts that source it use its names.
# shellcheck disable=SC2034

# Unpacked under /var/tmp: /run is noexec after an initramfs boot.
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
