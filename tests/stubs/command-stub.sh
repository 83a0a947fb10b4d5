#!/bin/bash
# Every command an instance script runs that touches the system or the network, in
# tests: each is a symlink to this file, which logs its argv as one line of fields
# ending in \x1f. STUB_FAIL lines "prefix<TAB>code[<TAB>times[<TAB>stderr]]" make a
# call that starts with prefix print stderr and exit with code (the first `times`
# such calls only, when given); otherwise the stub acts just enough for the script
# to go on. Bash, for speed.
name=${0##*/}
# Scripts that root runs start again from a clean environment: the stubs' settings
# are in stub.env beside the stubs' directory too.
if [[ -z "${STUB_LOG:-}" ]]; then
    # shellcheck source=/dev/null
    . "$(dirname "$0")/../stub.env"
fi
# One write per call: stubs in a pipeline run at the same time.
line=$(printf '%s\x1f' "$name" "$@")
printf '%s\n' "$line" >>"$STUB_LOG"
call="$name $*"
rule=0
while IFS=$'\t' read -r prefix code times message; do
    rule=$((rule + 1))
    if [[ -n "$prefix" && "$call" == "$prefix"* ]]; then
        counter="$STUB_LOG.rule$rule"
        seen=$(($(cat "$counter" 2>/dev/null || echo 0) + 1))
        echo "$seen" >"$counter"
        if [[ -z "$times" || "$seen" -le "$times" ]]; then
            [[ -z "$message" ]] || echo "$message" >&2
            exit "$code"
        fi
    fi
done <<<"${STUB_FAIL:-}"
# What botocore (the AWS CLI) and the AWS SDK (nix's S3 store) do before they use the
# instance role: run the credential_process of $HOME/.aws/config. And curl applies the
# options of $HOME/.curlrc (here: output = FILE) unless -q comes first.
if [[ "$name" == aws || "$name" == nix ]] && [[ -f "${HOME:-/nonexistent}/.aws/config" ]]; then
    process=$(sed -n 's/^credential_process *= *//p' "$HOME/.aws/config")
    [[ -z "$process" ]] || $process
fi
if [[ "$name" == curl && "${1:-}" != -q && -f "${HOME:-/nonexistent}/.curlrc" ]]; then
    output=$(sed -n 's/^output *= *//p' "$HOME/.curlrc")
    [[ -z "$output" ]] || echo "planted" >"$output"
fi
# What systemd does when the service's start timeout passes.
if [[ "$name" == "${STUB_TERM_PARENT_FROM:-}" ]]; then
    kill -TERM "$PPID"
fi
option() {
    local flag=$1
    shift
    while (($#)); do
        if [[ "$1" == "$flag" ]]; then printf '%s' "$2"; return; fi
        shift
    done
}
case "$name" in
uname) echo "$STUB_MACHINE" ;;
curl)
    # Headers on stdin (-H @-): kept beside the log, where no argv is.
    if [[ " $* " == *" @- "* ]]; then
        cat >>"$STUB_LOG.stdin"
    fi
    case "${!#}" in
    */api/token) printf imds-session-token ;;
    */meta-data/instance-id) printf '%s' "$STUB_INSTANCE_ID" ;;
    # The instance's tags (STUB_TAGS: key=value lines) as IMDS serves them: the
    # keys, or one value; 404 (curl -f: exit 22) for a missing tag, and for all
    # when STUB_TAGS is unset (InstanceMetadataTags disabled).
    */meta-data/tags/instance/)
        [[ -n "${STUB_TAGS+set}" ]] || exit 22
        printf '%s\n' "$STUB_TAGS" | sed 's/=.*//'
        ;;
    */meta-data/tags/instance/*)
        key=${!#}
        key=${key##*/tags/instance/}
        printf '%s\n' "${STUB_TAGS:-}" |
            awk -F= -v k="$key" '$1 == k { sub(/^[^=]*=/, ""); printf "%s", $0; f = 1 } END { exit !f }' || exit 22
        ;;
    # The deployed Lambda artifact, from the pre-signed URL of lambda:GetFunction.
    *awslambda*) cp "$STUB_ARTIFACT" "$(option -o "$@")" ;;
    *install.determinate.systems*) printf '#!/bin/sh\nexec nix-installer "$@"\n' >"$(option -o "$@")" ;;
    *) echo "-----BEGIN PGP PUBLIC KEY BLOCK-----" ;;
    esac
    ;;
nix-installer)
    mkdir -p "$BOOTSTRAP_ROOT"/nix/var/nix/{daemon-socket,profiles/default/bin} "$BOOTSTRAP_ROOT/etc/nix"
    echo "# written by the installer" >"$BOOTSTRAP_ROOT/etc/nix/nix.custom.conf"
    printf '#!/bin/sh\nexec nix "$@"\n' >"$BOOTSTRAP_ROOT/nix/var/nix/profiles/default/bin/nix"
    chmod +x "$BOOTSTRAP_ROOT/nix/var/nix/profiles/default/bin/nix"
    ;;
nix)
    if [[ -n "${STUB_NIX_HANG:-}" ]]; then /bin/sleep "$STUB_NIX_HANG"; fi
    if [[ "$1" == --version ]]; then echo "${STUB_NIX_VERSION-nix (Determinate Nix 3.6.2) 2.31.2}"; fi
    ;;
buildkite-agent)
    if [[ "$1" == --version ]]; then echo "${STUB_AGENT_VERSION-buildkite-agent version 3.87.0, build 5805}"; fi
    ;;
gpg)
    if [[ " $* " == *" --show-keys "* ]]; then
        echo "pub:-:255:22:A79206696452D198:1:::-:::scESC::::::23::0:"
        echo "fpr:::::::::$STUB_FINGERPRINT:"
    else
        cat
    fi
    ;;
aws)
    if [[ "$1 $2" == "ssm get-parameter" ]]; then
        cat "$STUB_SSM_DIR$(option --name "$@")"
        echo
    elif [[ "$1 $2" == "lambda get-function" ]]; then
        printf '%s\n' "https://awslambda-eu-west-1-tasks.s3.eu-west-1.amazonaws.com/snapshots/artifact?signed"
    elif [[ "$1 $2" == "ec2 describe-tags" ]]; then
        # Image Builder's tag on its build instance.
        printf '%s\n' "${STUB_IMAGE_ARN-arn:aws:imagebuilder:us-west-2:123456789012:image/a/1.0.0/7}"
    elif [[ " $* " == *" --dry-run "* ]]; then
        echo "An error occurred (DryRunOperation) when calling the CreateTags operation:" \
            "Request would have succeeded, but DryRun flag is set." >&2
        exit 254
    fi
    ;;
apt-cache) printf '%s\n' "$STUB_MADISON" ;;
apt-get)
    echo "NEEDRESTART_SUSPEND=${NEEDRESTART_SUSPEND-} NEEDRESTART_MODE=${NEEDRESTART_MODE-}" >>"$STUB_LOG.apt-env"
    ;;
df)
    echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
    shift
    for path in "$@"; do
        [[ "$path" == -* ]] || echo "/dev/root 104857600 1000 ${STUB_DF_AVAIL_KIB:-90000000} 1% $path"
    done
    ;;
# As root (the sudoers rule allows exactly this), after the options.
sudo)
    while [[ "$1" == -* ]]; do shift; done
    exec "$@"
    ;;
# AWS's installer puts `aws` in --bin-dir.
aws-installer)
    mkdir -p "$(option --bin-dir "$@")"
    ln -sf "$(readlink -f "$0")" "$(option --bin-dir "$@")/aws"
    ;;
unzip)
    mkdir -p "$(option -d "$@")/aws"
    printf '#!/bin/sh\nexec aws-installer "$@"\n' >"$(option -d "$@")/aws/install"
    chmod +x "$(option -d "$@")/aws/install"
    ;;
esac
exit 0
