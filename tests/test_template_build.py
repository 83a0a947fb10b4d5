"""The SAM CLI on template.yaml: `sam validate --lint`; the SAM transform's generated roles and
schedules; and a Docker-free `sam build` whose artifact imports every handler with its own
dependencies and carries userdata/ and the instance package the image bake runs.

Slow-ish (the build fetches arm64 wheels from PyPI): the build runs once per module.
Neither command may need AWS credentials, so they run without any.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.template import (
    TEAM_DEFAULTS,
    Resolver,
    findings_by_statement,
    lambda_environment,
    parameter_values,
    queue_check_properties,
)
from tools.invoke import load_template

from autoscaler import queue_check
from autoscaler.config import ScalerSettings
from instance.files import instance_file

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("ScalerFunction", "ReaperFunction", "QueueCheckFunction", "ImageParameterFunction")
HANDLERS = ("autoscaler.scaler", "autoscaler.reaper", "autoscaler.queue_check", "autoscaler.image_parameter")


def sam() -> str:
    path = shutil.which("sam")
    assert path, "sam not on PATH: run the tests through `make pytest` (it puts .venv-sam/bin first)"
    return path


def without_credentials() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return {
        **environment,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAM_CLI_TELEMETRY": "0",
    }


def run_sam(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sam(), *arguments],
        cwd=ROOT,
        env=without_credentials(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    result = run_sam("build", "--template-file", "template.yaml", "--build-dir", str(build_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir


# parliament findings in the roles SAM generates (for the schedules), each with the reason.
GENERATED_FALSE_POSITIVES = {
    (role, "", "NO_VERSION"): (
        "SAM writes the schedule's role policy without a Version, so IAM reads it as 2008-10-17, which "
        "lacks only policy variables; its one statement (lambda:InvokeFunction on its function) uses none."
    )
    for role in ("ScalerFunctionEveryMinuteRole", "ReaperFunctionEveryFiveMinutesRole")
}
# What the SAM transform needs: an S3 CodeUri in place of the local one, and a region.
TRANSFORM = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

template = yaml_parse(open("template.yaml").read())
template["Globals"]["Function"]["CodeUri"] = "s3://bucket/artifact.zip"
json.dump(transform(template, {}, NoManagedPolicies()), sys.stdout)
"""


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    """template.yaml after the SAM transform, by the translator of the SAM CLI's own environment."""
    python = Path(sam()).parent / "python"
    result = subprocess.run(  # the SAM CLI's interpreter, a fixed script
        [str(python), "-c", TRANSFORM], cwd=ROOT, env=without_credentials(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_roles_sam_generates_invoke_only_their_function_and_pass_parliament(transformed: dict[str, Any]) -> None:
    written = set(load_template()["Resources"])
    generated = {
        name: spec
        for name, spec in transformed["Resources"].items()
        if spec["Type"] == "AWS::IAM::Role" and name not in written
    }
    assert set(generated) == {role for role, _, _ in GENERATED_FALSE_POSITIVES}
    resolver = Resolver(transformed, parameter_values(transformed))
    found = set()
    for role, spec in generated.items():
        (policy,) = resolver.resolve(spec["Properties"]["Policies"])
        (statement,) = policy["PolicyDocument"]["Statement"]
        function = role.split("Function")[0] + "Function"
        assert statement["Action"] == "lambda:InvokeFunction"
        assert statement["Resource"] == resolver.attribute(function, "Arn")
        found |= findings_by_statement(role, policy["PolicyDocument"])
    assert found == set(GENERATED_FALSE_POSITIVES)


def test_schedules_get_generated_names_so_two_stacks_can_coexist(transformed: dict[str, Any]) -> None:
    schedules = [spec for spec in transformed["Resources"].values() if spec["Type"] == "AWS::Scheduler::Schedule"]
    assert len(schedules) == 2
    assert all("Name" not in schedule["Properties"] for schedule in schedules)


def test_sam_validate_lint_passes_without_credentials() -> None:
    result = run_sam("validate", "--lint", "--template-file", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.mark.parametrize("function", FUNCTIONS)
def test_built_artifact_imports_every_handler_with_its_own_dependencies(build_dir: Path, function: str) -> None:
    artifact = build_dir / function
    probe = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(artifact)!r})\n"
        "import aws_lambda_powertools, requests\n"
        f"for name in {HANDLERS!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert callable(module.handler), name\n"
        "    print(module.__file__)\n"
        "print(requests.__file__)\n"
        "print(aws_lambda_powertools.__file__)\n"
    )
    # -E -s: nothing from the environment or user site decides what gets imported.
    result = subprocess.run(
        [sys.executable, "-E", "-s", "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert len(imported) == len(HANDLERS) + 2
    assert all(Path(path).is_relative_to(artifact) for path in imported), imported


@pytest.mark.parametrize("function", FUNCTIONS)
def test_built_artifact_carries_userdata_and_the_instance_package_and_nothing_of_the_dev_tree(
    build_dir: Path, function: str
) -> None:
    artifact = build_dir / function

    def files(directory: Path) -> set[Path]:
        return {p.relative_to(directory) for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert files(artifact / "userdata") == files(ROOT / "userdata")
    assert files(artifact / "autoscaler") == files(ROOT / "functions" / "autoscaler")
    # Beside autoscaler/: the renderer imports it, and the image bake runs it from this artifact.
    assert files(artifact / "instance") == files(ROOT / "functions" / "instance")
    top_level = {path.name for path in artifact.iterdir()}
    assert not top_level & {"tests", "simulation", "events", "functions", "template.yaml", "Makefile"}
    assert not [name for name in top_level if name.startswith(".venv")]
    assert not (artifact / "boto3").exists(), "boto3 comes with the Lambda runtime"


def test_built_artifact_is_small(build_dir: Path, tmp_path: Path) -> None:
    archive = Path(shutil.make_archive(str(tmp_path / "artifact"), "zip", build_dir / FUNCTIONS[0]))
    # Far under Lambda's 50 MB direct-upload limit; a jump means a dependency crept in.
    assert archive.stat().st_size < 10 * 1024 * 1024


# SAM's own reading of a samconfig.toml's parameter_overrides, as `sam deploy` does.
READ_OVERRIDES = """
import json
from pathlib import Path
from samcli.cli.types import CfnParameterOverridesType
from samcli.lib.config.samconfig import SamConfig

values = SamConfig(Path(".")).get_all(["deploy"], "parameters")
print(json.dumps(CfnParameterOverridesType().convert(values["parameter_overrides"], None, None)))
"""


def test_the_deploy_guides_gpu_queue_example_deploys_as_written(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    (example,) = [block for block in re.findall(r"```toml\n(.*?)```", guide, re.DOTALL) if "Queues" in block]
    (tmp_path / "samconfig.toml").write_text(f'version = 0.1\n[default.deploy.parameters]\nstack_name = "x"\n{example}')
    python = Path(sam()).parent / "python"
    result = subprocess.run(  # the SAM CLI's interpreter, a fixed script
        [str(python), "-c", READ_OVERRIDES],
        cwd=tmp_path,
        env=without_credentials(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    overrides = json.loads(result.stdout)

    template = load_template()
    resolver = Resolver(template, parameter_values(template, **overrides))
    queue_check.check(queue_check_properties(template, resolver))
    settings = ScalerSettings.from_env(lambda_environment(template, resolver, "ScalerFunction"))
    *team, gpu = settings.queues
    # The team's queues as the defaults have them, and the GPU queue on the x86 launch template.
    assert {queue.name: (queue.architecture, queue.instance_types) for queue in team} == {
        name: values[:2] for name, values in TEAM_DEFAULTS.items()
    }
    assert {queue.name: queue.max_instances for queue in team} == {name: v[3] for name, v in TEAM_DEFAULTS.items()}
    assert (gpu.name, gpu.architecture, gpu.instance_types[0]) == ("nixos-gpu-aws", "x86_64", "g5.2xlarge")
    assert gpu.launch_template_id == resolver.ref("X86LaunchTemplate")


def test_the_image_component_can_install_from_the_built_artifact(build_dir: Path, tmp_path: Path) -> None:
    # What the component does on the build instance: the zipped artifact, extracted, runs
    # `python3 -m instance.bake` with nothing but the standard library (-S: no site-packages).
    archive = Path(shutil.make_archive(str(tmp_path / "artifact"), "zip", build_dir / FUNCTIONS[0]))
    extracted, root = tmp_path / "artifact", tmp_path / "root"
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(archive), str(extracted)], check=True)
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "fleet": "ci",
                "region": "eu-west-1",
                "cache_bucket": "test-nix-cache",
                "cache_region": "eu-west-1",
                "cache_public_key": "test-cache-1:" + "A" * 43 + "=",
            }
        ),
        encoding="utf-8",
    )
    bake = [sys.executable, "-S", "-m", "instance.bake", "install-files"]
    result = subprocess.run(
        [*bake, "--settings", str(settings), "--arch", "arm64", "--root", str(root)],
        env={"PYTHONPATH": str(extracted), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (root / "usr/local/sbin/buildkite-bootstrap").read_text() == instance_file(ROOT / "userdata", "bootstrap.sh")
    assert "BK_ARCH=arm64" in (root / "etc/buildkite-bootstrap/settings.env").read_text(encoding="ascii")
