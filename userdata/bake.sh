#!/usr/bin/env bash
# The image bake, run as root on the Image Builder build instance by the component
# (template.yaml, AgentImageComponent) from the deployed scaler's artifact, which holds
# instance/ (the bake's Python, standard library only) and userdata/:
#
#   bake.sh build SETTINGS_PARAMETER   the build phase: the bake's settings (JSON, no
#       secrets) from SSM; the user-data's files where cloud-init writes them and a
#       settings.env of install-time values (python3 -m instance.bake install-files);
#       then `buildkite-bootstrap bake`: the stock boot's install steps, the warm Nix
#       store, the image's marker, an empty machine id.
#   bake.sh validate                   the validate phase: no secret nor instance state
#       on the disk (`buildkite-bootstrap check-secrets`); the artifact removed.
#
# The AWS CLI comes from AWS's own component, which runs first.
set -Eeuo pipefail

ARTIFACT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=userdata/lib/common.sh
. "$ARTIFACT/userdata/lib/common.sh"
LOG_TAG=bake
BOOTSTRAP="$ROOT/usr/local/sbin/buildkite-bootstrap"

build() {
    local settings="$ARTIFACT/settings.json"
    aws ssm get-parameter --name "$1" --query Parameter.Value --output text >"$settings"
    PYTHONPATH="$ARTIFACT" python3 -m instance.bake install-files --root "${ROOT:-/}" --settings "$settings" \
        --arch "$(machine_arch)"
    "$BOOTSTRAP" bake
}

validate() {
    "$BOOTSTRAP" check-secrets
    log "no secret on the disk; removing the artifact"
    rm -rf "$ARTIFACT"
}

case "${1:-}" in
build) build "${2:?usage: bake.sh build SETTINGS_PARAMETER}" ;;
validate) validate ;;
*)
    printf 'usage: %s build SETTINGS_PARAMETER | validate\n' "$0" >&2
    exit 2
    ;;
esac
