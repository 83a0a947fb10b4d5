"""userdata/steps/settings.sh alone: the settings a mode needs, checked before any step uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.steps import SETTINGS, StepRun, put, root_of, run_step, settings

from instance.settings import settings_env

INSTALL_ONLY = [
    "BK_REGION",
    "BK_ROOT_MODE",
    "BK_NIX_INSTALLER_VERSION",
    "BK_NIX_DETERMINATE",
    "BK_AGENT_VERSION",
    "BK_CACHE_BUCKET",
    "BK_CACHE_REGION",
    "BK_CACHE_PUBLIC_KEY",
]


def load(tmp_path: Path, function: str, values: dict[str, str]) -> StepRun:
    put(root_of(tmp_path), "/etc/buildkite-bootstrap/settings.env", settings_env(values, "test settings"))
    return run_step(tmp_path, "settings", f'{function}\necho "queue=${{BK_QUEUE:-}}"')


def test_load_settings_reads_the_rendered_settings(tmp_path: Path) -> None:
    run = load(tmp_path, "load_settings", SETTINGS)

    assert (run.returncode, run.stdout) == (0, "queue=nixos-x86-aws\n"), run.console
    assert run.calls == []


@pytest.mark.parametrize("name", ["BK_QUEUE", "BK_AGENT_TOKEN_PARAMETER", "BK_CACHE_PUBLIC_KEY", "BK_BOOTSTRAP_FAILED"])
def test_load_settings_refuses_a_missing_setting_by_name(tmp_path: Path, name: str) -> None:
    run = load(tmp_path, "load_settings", settings(**{name: ""}))

    assert run.returncode == 1
    assert f"settings.env does not set {name}" in run.stderr


@pytest.mark.parametrize("name", ["BK_AGENTS_PER_INSTANCE", "BK_IDLE_TIMEOUT_SECONDS", "BK_MAX_UPTIME_SECONDS"])
@pytest.mark.parametrize("value", ["5x", "-1", "1 2", "$(id)"])
def test_load_settings_refuses_a_count_that_is_not_a_number(tmp_path: Path, name: str, value: str) -> None:
    run = load(tmp_path, "load_settings", settings(**{name: value}))

    assert run.returncode == 1
    assert f"sets {name} to a non-number" in run.stderr
    assert run.calls == []


def test_load_settings_takes_absent_optional_counts_as_0(tmp_path: Path) -> None:
    run = load(tmp_path, "load_settings", settings(BK_IDLE_TIMEOUT_SECONDS="", BK_MAX_UPTIME_SECONDS=""))

    assert run.returncode == 0, run.console


def test_load_install_settings_needs_only_the_install_time_values(tmp_path: Path) -> None:
    run = load(tmp_path, "load_install_settings", {name: SETTINGS[name] for name in INSTALL_ONLY})

    assert (run.returncode, run.stdout) == (0, "queue=\n"), run.console


def test_load_install_settings_refuses_a_missing_install_setting(tmp_path: Path) -> None:
    values = {name: SETTINGS[name] for name in INSTALL_ONLY if name != "BK_ROOT_MODE"}
    run = load(tmp_path, "load_install_settings", values)

    assert run.returncode == 1
    assert "does not set BK_ROOT_MODE" in run.stderr


def test_a_missing_settings_file_fails(tmp_path: Path) -> None:
    run = run_step(tmp_path, "settings", "load_settings")

    assert run.returncode == 1
    assert "settings.env" in run.stderr
