#!/usr/bin/env bash
# Bootstrap of one Buildkite agent instance, /usr/local/sbin/buildkite-bootstrap MODE.
#
#   prepare   cloud-init's runcmd, once per instance. A baked image (its marker
#             /etc/buildkite-bootstrap/image) refreshes the units and starts the
#             bootstrap service; the stock AMI installs first (the bake's install
#             steps), then reboots into overlayroot or starts the service (ebs).
#             A warm-pool instance's first boot starts the park service instead.
#   run       buildkite-bootstrap.service, every boot: secrets from SSM, agent
#             config, agent start, tag complete. Same on both paths.
#   park      buildkite-pool-park.service, a warm-pool instance's first boot after
#             cloud-init: read the volume once, tag bootstrap=pooled, stop.
#   release   agent-exited.sh, once the agent exited for good: a pool instance
#             stops back into its pool when the scaler's on-exit tag says so
#             (exit 0); exit 1 tells the caller to power off.
#   bake      the image bake (userdata/bake.sh), after the files and a settings.env
#             of install-time values are in place: the install steps, the warm Nix
#             store, the image's marker. Never tags or powers off.
#   check-secrets   the bake's validate phase: fails on a secret or instance state.
#   plan MODE       prints the steps MODE would run with this machine's settings and
#                   image, running none. "[if parking]": known only at run time.
#
# The steps are functions in steps/*.sh, one file per concern, on lib/common.sh.
# A failing command ends its step; in the modes that power off, the instance
# tags itself bootstrap=failed, prints the step and exit code to the console
# (the reaper logs the console before terminating) and powers off.
# The mode lists below are read by name (mode_list), which shellcheck cannot follow.
# shellcheck disable=SC2034
set -Eeuo pipefail

# shellcheck source=userdata/lib/common.sh
. "${BOOTSTRAP_ROOT:-}/usr/local/lib/buildkite-bootstrap/lib/common.sh"
for step_file in "$LIB"/steps/*.sh; do
    # shellcheck source=/dev/null
    . "$step_file"
done

# Each mode's steps in order, as "STEP [CONDITION...]": a step runs when all its
# conditions hold. stock/baked: the image marker; pool: BK_ROLE; overlayroot/ebs:
# BK_ROOT_MODE; parking/not-parking: read_pool_state's answer. "@LIST" stands for
# that list's steps, with the row's conditions added.
INSTALL_STEPS=(stop_apt_timers install_packages install_aws_cli install_nix configure_nix_cache install_agent
    configure_nix_users install_files "configure_overlayroot overlayroot" check_no_secrets)
MODE_PREPARE=(load_settings load_instance_id check_arch "read_pool_state pool" "check_image baked"
    "install_files baked" "@INSTALL_STEPS stock" "enable_bootstrap_service stock"
    "enable_bootstrap_service baked parking" "start_park_service parking"
    "request_reboot stock overlayroot not-parking" "start_bootstrap_service stock ebs not-parking"
    "start_bootstrap_service baked not-parking")
MODE_RUN=(load_settings load_instance_id check_arch "check_root_filesystem overlayroot"
    "apply_build_space overlayroot" check_tag_permission read_secrets install_signing_key install_ssh_key
    write_agent_config start_agent mark_complete)
MODE_PARK=(load_settings load_instance_id warm_volume stop_into_pool)
MODE_RELEASE=(load_settings check_release load_instance_id check_on_exit stop_into_pool)
MODE_BAKE=(load_install_settings load_instance_id @INSTALL_STEPS warm_nix_store write_image_marker empty_machine_id)
MODE_CHECK_SECRETS=(check_no_secrets)
# What goes wrong in these ends the instance: it tags itself failed and powers off.
POWER_OFF_MODES=" prepare run park release "

export DEBIAN_FRONTEND=noninteractive
# Ubuntu's needrestart runs after each apt-get: it must neither wait for an
# answer nor restart services (cloud-init's, the bake's SSM agent) mid-boot.
export NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l
umask 022

# mode_list MODE: the name of MODE's list.
mode_list() {
    local name="MODE_${1^^}"
    name=${name//-/_}
    [[ "$1" =~ ^[a-z-]+$ && -n "${!name+set}" ]] || return 1
    printf '%s\n' "$name"
}

# expand_rows LIST [CONDITION...]: LIST's rows, @LISTs expanded, CONDITIONs added.
expand_rows() {
    local -n list=$1
    shift
    local row name extra
    for row in "${list[@]}"; do
        read -r name extra <<<"$row"
        if [[ "$name" == @* ]]; then
            # shellcheck disable=SC2086 # conditions are single words
            expand_rows "${name#@}" "$@" $extra
        else
            printf '%s\n' "$row${*:+ $*}"
        fi
    done
}

# holds CONDITION: true when it holds now.
holds() {
    case "$1" in
    stock) [[ ! -f "$IMAGE_MARKER" ]] ;;
    baked) [[ -f "$IMAGE_MARKER" ]] ;;
    pool) [[ "${BK_ROLE:-}" == pool ]] ;;
    overlayroot | ebs) [[ "${BK_ROOT_MODE:-}" == "$1" ]] ;;
    parking) [[ "$PARK" == true ]] ;;
    not-parking) [[ "$PARK" != true ]] ;;
    # A mistake in the lists above, which the plan tests would show: never a silent skip.
    *)
        log "unknown condition $1 in a mode's list"
        exit 70
        ;;
    esac
}

run_mode() {
    local rows row step conditions condition runs
    mapfile -t rows < <(expand_rows "$(mode_list "$1")")
    if [[ "$POWER_OFF_MODES" == *" $1 "* ]]; then
        POWER_OFF_ON_FAILURE=true
    fi
    for row in "${rows[@]}"; do
        read -r step conditions <<<"$row"
        runs=true
        for condition in $conditions; do
            holds "$condition" || runs=false
        done
        if [[ "$runs" == true ]]; then
            run_step "$step"
        fi
    done
}

# plan MODE: the steps MODE selects with this machine's settings and image; a
# condition only a run can tell is printed beside its step.
plan() {
    local rows row step conditions condition shown later
    if [[ -f "$SETTINGS" ]]; then
        read_settings
    fi
    mapfile -t rows < <(expand_rows "$(mode_list "$1")")
    printf 'plan of %s: %s image, role %s, root %s\n' "$1" "$(holds baked && echo baked || echo stock)" \
        "${BK_ROLE:-none}" "${BK_ROOT_MODE:-unset}"
    for row in "${rows[@]}"; do
        read -r step conditions <<<"$row"
        shown=true later=""
        for condition in $conditions; do
            case "$condition" in
            # Only a pool instance parks.
            parking) if holds pool; then later=" [if parking]"; else shown=false; fi ;;
            not-parking) if holds pool; then later=" [unless parking]"; fi ;;
            *) holds "$condition" || shown=false ;;
            esac
        done
        if [[ "$shown" == true ]]; then
            printf '%s%s\n' "$step" "$later"
        fi
    done
}

main() {
    local mode=${1:-}
    if [[ "$mode" == plan ]] && mode_list "${2:-}" >/dev/null; then
        plan "$2"
    elif [[ "$mode" != plan ]] && mode_list "$mode" >/dev/null; then
        trap 'on_failure $?' ERR
        # A start timeout (systemd, or runcmd's `timeout`) ends us with SIGTERM: a failure too.
        trap 'on_failure 143' TERM
        run_mode "$mode"
    else
        printf 'usage: %s prepare|run|park|release|bake|check-secrets, or plan MODE\n' "$0" >&2
        exit 2
    fi
}

main "$@"
