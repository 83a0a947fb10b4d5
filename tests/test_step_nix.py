"""userdata/steps/nix.sh alone: Nix pinned, its S3 cache, the nix-users group, a bake's warm store."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.steps import PUBLIC_KEY, StepRun, install_nix_profile, put, root_of, run_step, settings

INSTALLER = ["curl", "nix-installer"]


def install(tmp_path: Path, **changes: str) -> StepRun:
    return run_step(tmp_path, "nix", "install_nix", commands=INSTALLER, real=["sh"], env=settings(**changes))


@pytest.mark.parametrize(("determinate", "flavour"), [("true", "--determinate"), ("false", "--prefer-upstream-nix")])
def test_install_nix_runs_the_pinned_installer_of_the_chosen_flavour(
    tmp_path: Path, determinate: str, flavour: str
) -> None:
    run = install(tmp_path, BK_NIX_DETERMINATE=determinate, BK_NIX_INSTALLER_VERSION="v3.11.3")

    assert run.returncode == 0, run.console
    (download,) = run.calls_of("curl")
    assert download[-1] == "https://install.determinate.systems/nix/tag/v3.11.3"
    (installer,) = run.calls_of("nix-installer")
    assert installer[1:] == ["install", "linux", "--no-confirm", flavour, "--extra-conf", "trusted-users = root ubuntu"]
    assert not run.path("/var/tmp/nix-installer.sh").exists()


def test_install_nix_trusts_jobs_only_by_explicit_opt_in(tmp_path: Path) -> None:
    run = install(tmp_path, BK_NIX_TRUST_JOBS="true")

    assert run.returncode == 0, run.console
    (installer,) = run.calls_of("nix-installer")
    assert installer[-1] == "trusted-users = root ubuntu buildkite-agent @nix-users"


def test_a_failed_installer_download_runs_nothing(tmp_path: Path) -> None:
    run = run_step(tmp_path, "nix", "install_nix", commands=INSTALLER, real=["sh"], env=settings(), fail={"curl": 22})

    assert run.returncode == 22
    assert run.calls_of("nix-installer") == []


@pytest.mark.parametrize(("trust", "accepts"), [("false", False), ("true", True)])
def test_configure_nix_cache_adds_the_s3_cache_and_its_key(tmp_path: Path, trust: str, accepts: bool) -> None:
    put(root_of(tmp_path), "/etc/nix/nix.custom.conf", "# written by the installer\n")
    run = run_step(
        tmp_path, "nix", "configure_nix_cache", commands=["systemctl"], env=settings(BK_NIX_TRUST_JOBS=trust)
    )

    assert run.returncode == 0, run.console
    conf = run.read("/etc/nix/nix.custom.conf")
    assert conf.startswith("# written by the installer\n")
    assert "extra-substituters = s3://fleet-nix-cache?region=eu-central-1\n" in conf
    assert (
        f"trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= {PUBLIC_KEY}\n" in conf
    )
    assert "post-build-hook = /etc/nix/upload-to-cache.sh\n" in conf
    assert "download-buffer-size = 1073741824\n" in conf
    assert ("accept-flake-config = true" in conf) == accepts
    assert run.calls == [["systemctl", "restart", "nix-daemon.service"]]


@pytest.mark.parametrize(("ubuntu", "members"), [(True, ["buildkite-agent", "ubuntu"]), (False, ["buildkite-agent"])])
def test_configure_nix_users_opens_the_daemon_to_the_group(tmp_path: Path, ubuntu: bool, members: list[str]) -> None:
    (root_of(tmp_path) / "nix/var/nix/daemon-socket").mkdir(parents=True)
    run = run_step(
        tmp_path,
        "nix",
        "configure_nix_users",
        commands=["groupadd", "usermod", "id", "chgrp"],
        fail=None if ubuntu else {"id ubuntu": 1},
    )

    assert run.returncode == 0, run.console
    assert run.calls_of("groupadd") == [["groupadd", "-f", "nix-users"]]
    assert [call[-1] for call in run.calls_of("usermod")] == members
    assert run.calls_of("chgrp") == [["chgrp", "nix-users", f"{run.root}/nix/var/nix/daemon-socket"]]
    assert run.mode("/nix/var/nix/daemon-socket") == 0o770


def warm(tmp_path: Path, paths: str) -> StepRun:
    install_nix_profile(root_of(tmp_path))
    return run_step(tmp_path, "nix", "warm_nix_store", env={"BK_WARM_NIX_PATHS": paths})


def test_warm_nix_store_builds_each_reference_with_no_post_build_hook(tmp_path: Path) -> None:
    run = warm(tmp_path, "nixpkgs#hello  github:NixOS/nixpkgs/nixos-24.11#jq")

    assert run.returncode == 0, run.console
    build = ["nix", "--extra-experimental-features", "nix-command flakes", "--option", "post-build-hook", "", "build"]
    assert run.calls_of("nix") == [
        [*build, "--no-link", ref] for ref in ["nixpkgs#hello", "github:NixOS/nixpkgs/nixos-24.11#jq"]
    ]


@pytest.mark.parametrize("paths", ["", " "])
def test_warm_nix_store_builds_nothing_without_references(tmp_path: Path, paths: str) -> None:
    run = warm(tmp_path, paths)

    assert run.returncode == 0, run.console
    assert run.calls == []


def test_warm_nix_store_fails_on_a_reference_that_does_not_build(tmp_path: Path) -> None:
    install_nix_profile(root_of(tmp_path))
    run = run_step(
        tmp_path,
        "nix",
        "warm_nix_store",
        env={"BK_WARM_NIX_PATHS": "nixpkgs#nosuch nixpkgs#hello"},
        fail={"nix --extra-experimental-features nix-command flakes --option post-build-hook  build": (1, 1)},
    )

    assert run.returncode == 1
    assert len(run.calls_of("nix")) == 1
