#!/usr/bin/env bash
# Sourced first by every script that root runs beside the jobs: agent-exited.sh
# (ExecStopPost=+ of the agent's unit: root, but with that unit's environment,
# so HOME is the agent's home, which jobs write), drain-agent.sh (sudo from
# the build-space hook), the spot watcher and the cache uploader. botocore
# runs a credential_process from $HOME/.aws/config, and the AWS SDK of nix's
# S3 store does too; curl reads $HOME/.curlrc (the scripts also pass -q). A
# job that planted those files would run them as root.

# clean_environment NAME... -- SCRIPT [ARG...]: runs SCRIPT again with root's
# HOME, the unit's PATH (root wrote it), and only the NAMEs given that are set;
# returns at once in the clean run.
clean_environment() {
    if [[ "${BK_CLEAN_ENVIRONMENT:-}" == 1 ]]; then
        return 0
    fi
    local keep=(BK_CLEAN_ENVIRONMENT=1 "HOME=${BOOTSTRAP_ROOT:-}/root" "PATH=$PATH" LC_ALL=C)
    # BOOTSTRAP_ROOT: the tests' root; unset on an instance.
    set -- BOOTSTRAP_ROOT "$@"
    while [[ "$1" != -- ]]; do
        if [[ -n "${!1+set}" ]]; then
            keep+=("$1=${!1}")
        fi
        shift
    done
    shift
    exec env -i "${keep[@]}" "$BASH" "$@"
}
