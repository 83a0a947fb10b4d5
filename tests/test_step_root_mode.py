"""userdata/steps/root-mode.sh alone: overlayroot installed, its tmpfs checked and sized."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.steps import put, root_of, run_step, settings


def mounts(tmp_path: Path, root_type: str) -> None:
    put(root_of(tmp_path), "/proc/mounts", f"/dev/root /media/root-ro ext4 ro 0 0\noverlayroot / {root_type} rw 0 0\n")


@pytest.mark.parametrize("root_type", ["ext4", "xfs"])
def test_check_root_filesystem_refuses_a_disk_root(tmp_path: Path, root_type: str) -> None:
    mounts(tmp_path, root_type)
    run = run_step(tmp_path, "root-mode", "check_root_filesystem", real=["awk"])

    assert run.returncode == 1
    assert f"root filesystem is {root_type}, not the overlayroot tmpfs" in run.stderr


def test_check_root_filesystem_accepts_the_overlayroot_tmpfs(tmp_path: Path) -> None:
    mounts(tmp_path, "overlay")
    run = run_step(tmp_path, "root-mode", "check_root_filesystem", real=["awk"])

    assert run.returncode == 0, run.console


@pytest.mark.parametrize("size", ["75%", "24g"])
def test_apply_build_space_remounts_the_tmpfs_with_the_size(tmp_path: Path, size: str) -> None:
    run = run_step(
        tmp_path, "root-mode", "apply_build_space", commands=["mount", "df"], env=settings(BK_ROOT_TMPFS_SIZE=size)
    )

    assert run.returncode == 0, run.console
    assert run.calls_of("mount") == [["mount", "-o", f"remount,size={size}", f"{run.root}/media/root-rw"]]
    assert f"build space on the overlayroot tmpfs (size={size})" in run.stderr


def test_apply_build_space_without_a_size_remounts_nothing(tmp_path: Path) -> None:
    run = run_step(
        tmp_path, "root-mode", "apply_build_space", commands=["mount", "df"], env=settings(BK_ROOT_TMPFS_SIZE="")
    )

    assert run.returncode == 1
    assert "does not set BK_ROOT_TMPFS_SIZE" in run.stderr
    assert run.calls == []


def test_configure_overlayroot_sets_a_tmpfs_root_and_boots_through_the_initramfs(tmp_path: Path) -> None:
    put(root_of(tmp_path), "/etc/default/grub.d/40-force-partuuid.cfg", "GRUB_FORCE_PARTUUID=abcd-01\n")
    run = run_step(
        tmp_path, "root-mode", "configure_overlayroot", commands=["update-grub", "update-initramfs"], real=["sed"]
    )

    assert run.returncode == 0, run.console
    assert run.read("/etc/overlayroot.local.conf") == 'overlayroot="tmpfs"\n'
    assert run.read("/etc/default/grub.d/40-force-partuuid.cfg") == "#GRUB_FORCE_PARTUUID=abcd-01\n"
    assert run.calls == [["update-grub"], ["update-initramfs", "-u"]]


def test_configure_overlayroot_without_the_partuuid_setting(tmp_path: Path) -> None:
    run = run_step(tmp_path, "root-mode", "configure_overlayroot", commands=["update-grub", "update-initramfs"])

    assert run.returncode == 0, run.console
    assert not (run.root / "etc/default/grub.d").exists()
