"""The user-data the scaler renders at launch: valid, small, free of secrets."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.support.userdata import PUBLIC_KEY, QUEUES, REPO, SETTINGS

from autoscaler import userdata
from autoscaler.userdata import render_user_data
from instance.files import instance_file
from instance.settings import SettingsError

# The values the SSM stub of the bootstrap test serves; none may be rendered.
FAKE_SECRETS = ("bkct_FAKE_TOKEN_7f3a9c", "FAKE-SSH-KEY-b64e1d", "FAKE-SIGNING-KEY-0d9c2e", "PRIVATE KEY")
ODD = "q'\"$(touch${IFS}pwned)`id`:" + "Q" * 43 + "="

VARIANTS = list(itertools.product(QUEUES, ("floor", "burst"), ("overlayroot", "ebs")))


def render(queue: str = "x86", role: str = "burst", **changes: object) -> bytes:
    return render_user_data(dataclasses.replace(SETTINGS, **changes), QUEUES[queue], role, "ci-fleet")


def plain(user_data: bytes) -> str:
    if user_data[:2] == b"\x1f\x8b":
        user_data = gzip.decompress(user_data)
    return user_data.decode("ascii")


def settings_of(user_data: bytes) -> str:
    files = {entry["path"]: entry["content"] for entry in yaml.safe_load(plain(user_data))["write_files"]}
    return files["/etc/buildkite-bootstrap/settings.env"]


def sourced(settings_env: str, tmp_path: Path, *names: str) -> list[str]:
    """The values bash sees when it sources the file, as the bootstrap does."""
    path = tmp_path / "settings.env"
    path.write_text(settings_env)
    script = '. "$1"; shift; for name in "$@"; do printf "%s\\0" "${!name}"; done'
    result = subprocess.run(
        ["/bin/bash", "-c", script, "bash", str(path), *names], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    return result.stdout.split("\0")[:-1]


SCHEMA_CASES = {
    "x86-burst-overlayroot": lambda: render("x86", "burst", root_mode="overlayroot"),
    "x86-floor-ebs": lambda: render("x86", "floor", root_mode="ebs"),
    "arm-floor-overlayroot": lambda: render("arm", "floor", root_mode="overlayroot"),
    "arm-burst-ebs": lambda: render("arm", "burst", root_mode="ebs", agent_version="3.87.0", nix_determinate=False),
    "odd-value": lambda: render(cache_public_key=ODD),
}


@pytest.fixture(scope="module")
def schema_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """`cloud-init schema` on each case, run side by side (about 1 s each)."""
    cloud_init = shutil.which("cloud-init") or "/usr/bin/cloud-init"
    if not Path(cloud_init).exists():
        pytest.fail("cloud-init is not installed (Debian/Ubuntu package cloud-init); the schema check needs it")
    directory = tmp_path_factory.mktemp("schema")
    processes = {}
    for name, make in SCHEMA_CASES.items():
        path = directory / f"{name}.yaml"
        path.write_text(plain(make()))
        processes[name] = subprocess.Popen(
            [cloud_init, "schema", "--config-file", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return {
        name: subprocess.CompletedProcess(process.args, process.wait(), process.communicate()[0], "")
        for name, process in processes.items()
    }


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_cloud_init_accepts_the_rendered_user_data(
    schema_results: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    result = schema_results[case]
    assert result.returncode == 0, result.stdout
    assert "Valid cloud-config" in result.stdout


@pytest.mark.parametrize(("queue", "role", "root_mode"), VARIANTS)
def test_every_variant_fits_ec2_user_data_limit(queue: str, role: str, root_mode: str) -> None:
    user_data = render(queue, role, root_mode=root_mode)

    assert len(user_data) <= 16384
    assert plain(user_data).startswith("#cloud-config\n")


@pytest.fixture(autouse=True)
def fresh_renders() -> None:
    # Renders are cached per settings; tests that change the size limit need new ones.
    userdata.render_user_data.cache_clear()


def test_user_data_is_plain_text_when_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    big = len(plain(render()))
    monkeypatch.setattr(userdata, "EC2_USER_DATA_LIMIT", big)
    userdata.render_user_data.cache_clear()

    assert render().startswith(b"#cloud-config\n")

    monkeypatch.setattr(userdata, "EC2_USER_DATA_LIMIT", big - 1)
    userdata.render_user_data.cache_clear()
    assert render()[:2] == b"\x1f\x8b"


def test_user_data_too_big_even_compressed_fails_with_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userdata, "EC2_USER_DATA_LIMIT", 2000)

    with pytest.raises(
        SettingsError, match=r"user-data is \d+ bytes gzip-compressed \(\d+ plain\), over .* 2000 bytes"
    ):
        render()


def test_instance_gets_the_files_of_userdata_dir_unchanged_but_for_comments() -> None:
    document = yaml.safe_load(plain(render()))
    files = {entry["path"]: entry for entry in document["write_files"]}

    bootstrap = files["/usr/local/sbin/buildkite-bootstrap"]
    assert bootstrap["content"] == instance_file(REPO / "userdata", "bootstrap.sh")
    assert bootstrap["permissions"] == "0755"
    hook = files["/usr/local/lib/buildkite-bootstrap/upload-to-cache.sh"]
    assert hook["content"] == instance_file(REPO / "userdata", "upload-to-cache.sh")
    for name in (
        "buildkite-bootstrap.service",
        "cache-uploader.sh",
        "build-space-hook.sh",
        "agent-exited.sh",
        "spot-interruption-watch.sh",
        "spot-interruption-watch.service",
    ):
        assert files[f"/usr/local/lib/buildkite-bootstrap/{name}"]["content"] == instance_file(REPO / "userdata", name)
    assert document["runcmd"] == [
        ["timeout", "--kill-after=60", "15m", "/usr/local/sbin/buildkite-bootstrap", "prepare"]
    ]


def test_a_baked_boot_installs_no_package_from_cloud_init() -> None:
    document = yaml.safe_load(plain(render()))

    assert not {"packages", "package_update", "package_upgrade"} & set(document)


@pytest.mark.parametrize(("queue", "role", "root_mode"), VARIANTS)
def test_no_secret_is_ever_rendered(queue: str, role: str, root_mode: str) -> None:
    text = plain(render(queue, role, root_mode=root_mode))

    for secret in FAKE_SECRETS:
        assert secret not in text
    assert "/bk/agent-token" in text


def test_settings_carry_the_queue_role_and_deployment(tmp_path: Path) -> None:
    burst = settings_of(render("arm", "burst", root_mode="ebs", agent_version="3.87.0"))
    floor = settings_of(render("arm", "floor"))
    names = ("BK_QUEUE", "BK_ARCH", "BK_FLEET", "BK_IDLE_TIMEOUT_SECONDS", "BK_MAX_UPTIME_SECONDS", "BK_ROOT_MODE")
    names += ("BK_AGENT_VERSION", "BK_CACHE_BUCKET", "BK_CACHE_REGION", "BK_SSH_KEY_PARAMETER", "BK_BOOTSTRAP_TAG")

    assert sourced(burst, tmp_path, *names) == [
        "nixos-arm-aws",
        "arm64",
        "ci-fleet",
        "600",
        "21600",
        "ebs",
        "3.87.0",
        "fleet-nix-cache",
        "eu-central-1",
        "/bk/ssh-key",
        "buildkite-autoscaler:bootstrap",
    ]
    assert sourced(floor, tmp_path, "BK_IDLE_TIMEOUT_SECONDS", "BK_ROOT_MODE") == ["0", "ebs"]
    instance = ("BK_ROOT_TMPFS_SIZE", "BK_NIX_INSTALLER_VERSION", "BK_NIX_TRUST_JOBS", "BK_MIN_FREE_SPACE_GIB")
    assert sourced(floor, tmp_path, *instance) == ["75%", "v3.21.2", "false", "5"]


def test_odd_characters_stay_data_in_yaml_and_shell(tmp_path: Path) -> None:
    settings_env = settings_of(render(cache_public_key=ODD))

    assert sourced(settings_env, tmp_path, "BK_CACHE_PUBLIC_KEY") == [ODD]
    assert not list(tmp_path.glob("pwned*"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cache_public_key", "key-1:" + "Q" * 43 + "=\npost-build-hook = /tmp/evil"),
        ("cache_public_key", "key 1:" + "Q" * 43 + "="),
        ("cache_bucket", "bucket\nextra-substituters = http://evil"),
        ("cache_bucket", "bucket$(reboot)"),
        ("region", "us-west-2\n"),
        ("cache_region", "us-west-2'"),
        ("agent_token_parameter", "/bk/token\nBK_QUEUE=other"),
        ("ssh_key_parameter", "/bk/key name"),
        ("agent_version", "3.87.0; reboot"),
        ("root_mode", "tmpfs"),
        ("root_tmpfs_size", "75%,nr_inodes=1"),
        ("root_tmpfs_size", "0%"),
        ("nix_installer_version", "latest"),
        ("nix_installer_version", "v3.21.2/../../evil"),
        ("min_free_space_gib", -1),
    ],
)
def test_hostile_or_malformed_values_are_refused_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(SettingsError) as error:
        render(**{field: value})

    assert field in str(error.value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    "field", ["region", "agent_token_parameter", "ssh_key_parameter", "signing_key_parameter", "cache_bucket"]
)
def test_missing_value_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(SettingsError, match=f"{field} is required"):
        render(**{field: ""})


@pytest.mark.parametrize(
    ("role", "fleet", "queue_name", "message"),
    [
        ("spare", "ci-fleet", "nixos-x86-aws", "role must be one of floor, burst, pool (got 'spare')"),
        ("burst", "ci fleet", "nixos-x86-aws", "fleet must be"),
        ("burst", "ci-fleet", "nixos,arch=arm64", "queue.name must be"),
    ],
)
def test_role_fleet_and_queue_name_are_checked(role: str, fleet: str, queue_name: str, message: str) -> None:
    queue = dataclasses.replace(QUEUES["x86"], name=queue_name)

    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_user_data(SETTINGS, queue, role, fleet)


@pytest.mark.parametrize("architecture", ["aarch64", ""])
def test_an_architecture_the_bootstrap_cannot_check_is_refused(architecture: str) -> None:
    queue = dataclasses.replace(QUEUES["x86"], architecture=architecture)
    with pytest.raises(SettingsError, match=rf"arch must be x86_64 or arm64 \(got '{architecture}'\)"):
        render_user_data(SETTINGS, queue, "burst", "ci-fleet")


def test_renderer_finds_userdata_in_the_lambda_artifact_layout(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(REPO / "functions/autoscaler", artifact / "autoscaler")
    shutil.copytree(REPO / "functions/instance", artifact / "instance")
    shutil.copytree(REPO / "userdata", artifact / "userdata")
    script = (
        f"import sys; sys.path.insert(0, {str(artifact)!r})\n"
        "from autoscaler.config import QueueConfig, UserDataSettings\n"
        "from autoscaler.userdata import render_user_data\n"
        "settings = UserDataSettings('us-west-2', 'bucket', 'us-west-2', "
        f"{PUBLIC_KEY!r}, agent_token_parameter='/a', ssh_key_parameter='/b', signing_key_parameter='/c')\n"
        "queue = QueueConfig('q', 'x86_64', 'lt', ('m7i.large',), ('subnet',), 1)\n"
        "print(len(render_user_data(settings, queue, 'burst', 'fleet')))\n"
    )

    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=artifact, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert 0 < int(result.stdout) <= 16384


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO / "userdata").glob("*.sh")))
def test_a_script_without_its_comments_is_the_same_program(name: str) -> None:
    original = (REPO / "userdata" / name).read_text()
    stripped = instance_file(REPO / "userdata", name)
    # The shebang and every line of code stay, in order; only whole-line comments go.
    assert stripped.splitlines()[0] == original.splitlines()[0]
    assert original.startswith("#!")
    code = [line for line in original.splitlines() if not line.lstrip().startswith("#")]
    assert stripped.splitlines()[1:] == code
    assert subprocess.run(["bash", "-n"], input=stripped, text=True, check=False).returncode == 0


def test_comments_are_what_keeps_the_user_data_under_ec2s_limit() -> None:
    # Every variant stays under the limit with room to grow; with the comments it would not.
    assert max(len(render(queue, role)) for queue in QUEUES for role in ("floor", "burst", "pool")) < 14_000


def test_an_idle_timeout_the_bootstrap_could_outlast_is_refused_naming_field_and_value() -> None:
    queue = dataclasses.replace(QUEUES["x86"], idle_timeout_seconds=30)

    with pytest.raises(SettingsError, match=r"queue\.idle_timeout_seconds must be an integer >= 120 \(got 30\)"):
        render_user_data(SETTINGS, queue, "burst", "ci-fleet")


@pytest.mark.parametrize("version", ["3", "3.87.0", "3.138.0"])
def test_the_agent_is_the_newest_of_major_3_or_an_exact_3x_release(version: str, tmp_path: Path) -> None:
    assert sourced(settings_of(render(agent_version=version)), tmp_path, "BK_AGENT_VERSION") == [version]


@pytest.mark.parametrize("version", ["", "4", "4.0.1", "2.6.10", "33.1.0", "latest"])
def test_an_agent_version_of_another_major_is_refused_pointing_at_the_move(version: str) -> None:
    with pytest.raises(SettingsError) as error:
        render(agent_version=version)

    assert "agent_version" in str(error.value)
    if version:
        assert repr(version) in str(error.value)
        assert "docs/instance-boot.md, 'Agent versions'" in str(error.value)
