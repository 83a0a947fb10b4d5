"""The image bake's file step (python3 -m instance.bake install-files), as the component runs it.

The bake writes the same files the user-data writes at a stock boot, and a settings.env
of install-time values only; then the component runs the same install step
(tests/test_bake_component.py runs the component itself).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.userdata import QUEUES, SETTINGS

from autoscaler.userdata import render_user_data
from instance.bake import install_files
from instance.files import TEMPLATE, image_files, instance_file
from instance.settings import SettingsError

REPO = Path(__file__).resolve().parent.parent
SETTINGS_PATH = "etc/buildkite-bootstrap/settings.env"
FLEET = "ci-fleet"
WARM = "nixpkgs#hello /nix/store/0c0pmx7w1v8vsh2hfk3jl3z2qkd4xmm5-jq-1.7"
SETTINGS_JSON = {
    "fleet": FLEET,
    "region": SETTINGS.region,
    "root_mode": "overlayroot",
    "nix_determinate": True,
    "agent_version": "3.87.0",
    "cache_bucket": SETTINGS.cache_bucket,
    "cache_region": SETTINGS.cache_region,
    "cache_public_key": SETTINGS.cache_public_key,
    "warm_nix_paths": WARM,
}


def bake_json(**changes: Any) -> str:
    return json.dumps({**SETTINGS_JSON, **changes})


def user_data_files() -> dict[str, dict[str, Any]]:
    text = render_user_data(SETTINGS, QUEUES["x86"], "burst", FLEET)
    if text[:2] == b"\x1f\x8b":
        text = gzip.decompress(text)
    return {entry["path"]: entry for entry in yaml.safe_load(text)["write_files"]}


def sourced(path: Path, *names: str) -> list[str]:
    script = f'set -eu; . "{path}"; ' + "; ".join(f'printf "%s\\n" "${{{name}:-}}"' for name in names)
    return subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout.splitlines()


def installed_files(root: Path) -> set[str]:
    return {"/" + str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


# ----------------------------------------------------------------- the same files as the stock boot


def test_the_bake_installs_exactly_the_files_the_user_data_writes(tmp_path: Path) -> None:
    install_files(tmp_path, bake_json(), "x86_64")

    expected = user_data_files()
    assert installed_files(tmp_path) == set(expected)
    for path, entry in expected.items():
        target = tmp_path / path.lstrip("/")
        # Same mode; same bytes but for settings.env (per launch at a stock boot, install-time in an image).
        assert oct(target.stat().st_mode & 0o777) == oct(int(entry["permissions"], 8)), path
        if path != "/" + SETTINGS_PATH:
            assert target.read_text(encoding="utf-8") == entry["content"], path
    assert (tmp_path / "usr/local/sbin/buildkite-bootstrap").read_text() == instance_file(
        REPO / "userdata", "bootstrap.sh"
    )


def test_the_bake_settings_hold_install_time_values_and_no_names_of_secrets(tmp_path: Path) -> None:
    install_files(tmp_path, bake_json(), "arm64")

    settings = tmp_path / SETTINGS_PATH
    names = ("BK_ARCH", "BK_FLEET", "BK_REGION", "BK_ROOT_MODE", "BK_NIX_DETERMINATE", "BK_AGENT_VERSION")
    names += ("BK_CACHE_BUCKET", "BK_CACHE_REGION", "BK_CACHE_PUBLIC_KEY", "BK_NIX_INSTALLER_VERSION")
    names += ("BK_NIX_TRUST_JOBS", "BK_WARM_NIX_PATHS")
    assert sourced(settings, *names) == [
        "arm64",
        FLEET,
        "us-west-2",
        "overlayroot",
        "true",
        "3.87.0",
        SETTINGS.cache_bucket,
        SETTINGS.cache_region,
        SETTINGS.cache_public_key,
        "v3.21.2",
        "false",
        WARM,
    ]
    text = settings.read_text(encoding="ascii")
    assert "PARAMETER" not in text
    assert "BK_QUEUE" not in text


def test_empty_template_parameters_take_the_defaults_and_warm_nothing(tmp_path: Path) -> None:
    install_files(tmp_path, bake_json(agent_version="", nix_installer_version="", warm_nix_paths=""), "x86_64")

    values = sourced(tmp_path / SETTINGS_PATH, "BK_AGENT_VERSION", "BK_NIX_INSTALLER_VERSION", "BK_WARM_NIX_PATHS")
    assert values == ["3", "v3.21.2", ""]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"region": "Mars-1"}, "region must be an AWS region such as us-west-2 (got 'Mars-1')"),
        ({"region": 7}, "region must be an AWS region such as us-west-2 (got 7)"),
        ({"root_mode": "zfs"}, "root_mode must be one of overlayroot, ebs (got 'zfs')"),
        ({"nix_determinate": "yes"}, "nix_determinate must be true or false (got 'yes')"),
        ({"nix_trust_jobs": 1}, "nix_trust_jobs must be true or false (got 1)"),
        ({"cache_bucket": ""}, "cache_bucket is required (got '')"),
        ({"fleet": "ci fleet"}, "fleet must be letters, digits, '.', '_' or '-' (got 'ci fleet')"),
        ({"agent_version": "4.0.1"}, "agent_version must be buildkite-agent 3"),
        ({"warm_nix_paths": "nixpkgs#hello $(reboot)"}, "warm_nix_paths must be flake references or store paths"),
        ({"warm_nix_paths": ["nixpkgs#hello"]}, "warm_nix_paths must be a string of space-separated references"),
    ],
)
def test_bad_bake_settings_name_the_field_and_the_value(changes: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        install_files(tmp_path, bake_json(**changes), "x86_64")
    # Nothing half-done: no file is written by a bake that cannot say what to install.
    assert list(tmp_path.iterdir()) == []


def test_a_missing_setting_is_named(tmp_path: Path) -> None:
    settings = {key: value for key, value in SETTINGS_JSON.items() if key != "cache_public_key"}
    with pytest.raises(SettingsError, match=re.escape("cache_public_key is required (got '')")):
        install_files(tmp_path, json.dumps(settings), "x86_64")


@pytest.mark.parametrize("arch", ["riscv64", "aarch64", "amd64", ""])
def test_an_arch_other_than_the_bootstraps_names_is_refused(arch: str, tmp_path: Path) -> None:
    # The shell caller maps `uname -m` (aarch64) to arm64; the bake takes only the names BK_ARCH uses.
    with pytest.raises(SettingsError, match=re.escape(f"arch must be x86_64 or arm64 (got {arch!r})")):
        install_files(tmp_path, bake_json(), arch)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- files in subdirectories of userdata/

SUBDIR_TEMPLATE = """#cloud-config
write_files:
  - path: /etc/buildkite-bootstrap/settings.env
    permissions: "0644"
    content: @@settings.env@@
  - path: /usr/local/lib/buildkite-bootstrap/lib/common.sh
    permissions: "0644"
    content: @@lib/common.sh@@
  - path: /usr/local/lib/buildkite-bootstrap/steps/apt.sh
    permissions: "0755"
    content: @@steps/apt.sh@@
"""


def test_files_in_subdirectories_of_userdata_are_installed(tmp_path: Path) -> None:
    source, root = tmp_path / "userdata", tmp_path / "root"
    (source / "lib").mkdir(parents=True)
    (source / "steps").mkdir()
    (source / TEMPLATE).write_text(SUBDIR_TEMPLATE, encoding="utf-8")
    (source / "lib/common.sh").write_text('# shared helpers\nlog() { echo "$*"; }\n', encoding="utf-8")
    (source / "steps/apt.sh").write_text("#!/bin/bash\n# the apt step\napt-get update\n", encoding="utf-8")

    install_files(root, bake_json(), "x86_64", directory=source)

    lib = root / "usr/local/lib/buildkite-bootstrap"
    assert installed_files(root) == {
        "/" + SETTINGS_PATH,
        f"/{lib.relative_to(root)}/lib/common.sh",
        f"/{lib.relative_to(root)}/steps/apt.sh",
    }
    assert (lib / "lib/common.sh").read_text() == 'log() { echo "$*"; }\n'
    assert (lib / "steps/apt.sh").read_text() == "#!/bin/bash\napt-get update\n"
    assert oct((lib / "steps/apt.sh").stat().st_mode & 0o777) == "0o755"


@pytest.mark.parametrize("name", ["../secret", "/etc/shadow", "lib/../../secret", "./x.sh"])
def test_a_placeholder_that_leaves_userdata_is_not_a_file(name: str, tmp_path: Path) -> None:
    (tmp_path / TEMPLATE).write_text(
        f'write_files:\n  - path: /x\n    permissions: "0644"\n    content: @@{name}@@\n', encoding="utf-8"
    )
    assert image_files(tmp_path) == []


# ----------------------------------------------------------------- the command line, as the component runs it


def bake_cli(package_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages, no user site, no PYTHON* variables: the standard library only,
    # as on the build instance (Ubuntu's python3, nothing installed). -I also leaves the
    # working directory off sys.path, so the artifact's root is put there by hand.
    runner = f"import runpy, sys; sys.path.insert(0, {str(package_root)!r}); sys.argv[1:] = {list(args)!r}; "
    runner += "runpy.run_module('instance.bake', run_name='__main__', alter_sys=True)"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", runner],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def artifact(tmp_path: Path) -> Path:
    """instance/ and userdata/ side by side, as in the deployed artifact, without autoscaler/."""
    package_root = tmp_path / "artifact"
    shutil.copytree(REPO / "functions/instance", package_root / "instance")
    shutil.copytree(REPO / "userdata", package_root / "userdata")
    return package_root


def test_the_command_line_installs_with_the_standard_library_only(tmp_path: Path) -> None:
    package_root, root = artifact(tmp_path), tmp_path / "root"
    settings = tmp_path / "settings.json"
    settings.write_text(bake_json(), encoding="utf-8")

    result = bake_cli(
        package_root, "install-files", "--settings", str(settings), "--arch", "arm64", "--root", str(root)
    )

    assert result.returncode == 0, result.stderr
    assert installed_files(root) == set(user_data_files())
    assert f"bake: wrote {root / SETTINGS_PATH}" in result.stdout
    assert sourced(root / SETTINGS_PATH, "BK_ARCH") == ["arm64"]


@pytest.mark.parametrize(
    ("settings", "arch", "message"),
    [
        ("", "x86_64", "bake: build settings must be a JSON object (Expecting value at char 0)"),
        ("[]", "x86_64", "bake: build settings must be a JSON object (got list)"),
        (bake_json(root_mode="zfs"), "x86_64", "bake: root_mode must be one of overlayroot, ebs (got 'zfs')"),
        (bake_json(), "aarch64", "bake: arch must be x86_64 or arm64 (got 'aarch64')"),
    ],
)
def test_the_command_line_refuses_bad_settings_with_status_2_and_writes_nothing(
    settings: str, arch: str, message: str, tmp_path: Path
) -> None:
    package_root, root = artifact(tmp_path), tmp_path / "root"
    path = tmp_path / "settings.json"
    path.write_text(settings, encoding="utf-8")

    result = bake_cli(package_root, "install-files", "--settings", str(path), "--arch", arch, "--root", str(root))

    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not root.exists()


def test_the_command_line_has_no_other_command(tmp_path: Path) -> None:
    for removed in ("warm", "mark", "check-secrets"):
        result = bake_cli(artifact(tmp_path / removed), removed)
        assert result.returncode == 2
        assert "invalid choice" in result.stderr


def test_the_instance_package_imports_the_standard_library_only(tmp_path: Path) -> None:
    # A copy without autoscaler/ beside it, and no site-packages: an import of either fails.
    package_root = artifact(tmp_path)
    script = (
        f"import sys; sys.path.insert(0, {str(package_root)!r})\n"
        "import instance.settings, instance.files, instance.bake\n"
        "top = {name.partition('.')[0] for name in sys.modules}\n"
        "print(sorted(top - set(sys.stdlib_module_names) - set(sys.builtin_module_names) - {'instance', '__main__'}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], env={}, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert not (package_root / "autoscaler").exists()
