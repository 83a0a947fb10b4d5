"""The docs a new user follows, checked against the repository and the template.

The shell commands in the docs' code blocks are read as commands: the SSM
parameters they create must be the ones the template expects, the README's
commands must run as written, and every file the docs point to must exist.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from tools.invoke import load_template

from autoscaler import lifecycle
from autoscaler.config import QueueConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
TEMPLATE = load_template()
SECRET_PARAMETERS = ("AgentTokenParameter", "SshKeyParameter", "NixSigningKeyParameter")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def code_blocks(path: Path, languages: tuple[str, ...]) -> list[str]:
    return [body for language, body in FENCE.findall(path.read_text(encoding="utf-8")) if language in languages]


def shell_commands(path: Path) -> Iterator[list[str]]:
    """Each command of the shell code blocks, as the shell splits it: continuations and
    quoted newlines joined, comments dropped."""
    for block in code_blocks(path, ("sh", "bash", "")):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            pending = ""
            if words:
                yield words
        assert not pending, f"unterminated command in {path.name}: {pending}"


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def created_parameters(path: Path) -> set[str]:
    return {
        option(words, "--name") or ""
        for words in shell_commands(path)
        if words[:3] == ["aws", "ssm", "put-parameter"] and option(words, "--type") == "SecureString"
    }


def test_the_docs_create_the_secrets_under_the_names_the_template_expects() -> None:
    expected = {TEMPLATE["Parameters"][name]["Default"] for name in SECRET_PARAMETERS}
    for path in DOCS:
        assert created_parameters(path) <= expected, path.name
    # The deploy guide, which a new user follows from the top, creates all three.
    assert created_parameters(ROOT / "docs" / "deploy.md") == expected


def test_the_docs_secret_names_are_read_as_commands() -> None:
    # The reader above must see the guide's commands, or the check means nothing.
    commands = [words for words in shell_commands(ROOT / "docs" / "instance-boot.md") if words[:2] == ["aws", "ssm"]]
    assert len(commands) == 3


def test_the_example_parameter_overrides_deploy() -> None:
    (block,) = [b for b in code_blocks(ROOT / "docs" / "deploy.md", ("toml",)) if "parameter_overrides = [" in b]
    overrides = dict(
        item.split("=", 1) for item in tomllib.loads(block)["default"]["deploy"]["parameters"]["parameter_overrides"]
    )
    parameters = TEMPLATE["Parameters"]
    assert set(overrides) <= set(parameters)
    required = {name for name, spec in parameters.items() if "Default" not in spec}
    assert required <= set(overrides)
    for name, value in overrides.items():
        pattern = parameters[name].get("AllowedPattern")
        if pattern:
            assert re.fullmatch(pattern, value), (name, value)
        if "AllowedValues" in parameters[name]:
            assert value in map(str, parameters[name]["AllowedValues"]), (name, value)


# ----------------------------------------------------------------- files the docs point to

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A path in backticks that names a file or directory of this repository.
PATH = re.compile(r"`((?:\.ci|docs|tools|tests|functions|userdata|events|simulation)/[\w./-]*|[\w-]+\.md)`")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_document_and_file_the_docs_point_to_is_in_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # A link outside inline code: `QUEUES[1](name)` in an error message is no link.
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    links = [target for target in LINK.findall(prose) if "://" not in target]
    for target in links:
        assert (path.parent / target).exists(), target
    for target in PATH.findall(text):
        found = (ROOT / target).exists() or any(ROOT.glob(f"**/{target}"))
        assert found, target


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_docs_do_not_lean_on_documents_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8").lower()
    for phrase in ("seed setup", "the seed", "original setup document", "setup document"):
        assert phrase not in text, phrase


# ----------------------------------------------------------------- the README's commands


def test_the_readme_prerequisites_name_every_tool_make_test_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    prerequisites = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    # The tools `make test` runs that its virtualenvs do not provide.
    for tool in ("make", "Python 3.11", "cloud-init", "Node.js", "npm"):
        assert tool in prerequisites, tool
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "npm ci" in makefile
    assert "cloud-init schema" in readme


def test_the_readme_simulation_command_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (command,) = set(re.findall(r"`([^`\n]*-m simulation)`", readme))
    done = subprocess.run(f"{command} --help", shell=True, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "--compare" in done.stdout


# ----------------------------------------------------------------- licence, version, changes


def test_the_licence_is_mit_and_the_changelog_names_the_current_version() -> None:
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    (latest,) = re.findall(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.MULTILINE)[:1]
    assert latest == version


def test_the_deploy_guide_covers_upgrading_and_ends_with_a_first_launch_checklist() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", guide, flags=re.MULTILINE)
    assert "Upgrading" in sections
    assert "Migrating from hand-launched agents" in sections
    assert "checklist" in sections[-1].lower()
    last = guide.rsplit("\n## ", 1)[1]
    assert len(re.findall(r"^- \[ \] ", last, flags=re.MULTILINE)) >= 5


def test_the_deploy_guide_creates_the_cache_bucket_with_encryption_and_a_lifecycle_rule() -> None:
    commands = [" ".join(words) for words in shell_commands(ROOT / "docs" / "deploy.md")]
    s3api = [command for command in commands if command.startswith("aws s3api")]
    for call in (
        "create-bucket",
        "put-public-access-block",
        "put-bucket-encryption",
        "put-bucket-lifecycle-configuration",
    ):
        assert any(f"aws s3api {call} " in command for command in s3api), call
    assert any(command.startswith("nix-store --generate-binary-cache-key") for command in commands)


# ----------------------------------------------------------------- the README's contract tables

README = ROOT / "README.md"


def table_rows(header: str, path: Path = README) -> dict[str, list[str]]:
    """The rows of the table whose header row starts with `header`, by each backticked name
    of their first cell (a cell may name several: `A`, `B`), as lists of cells."""
    text = path.read_text(encoding="utf-8")
    (table,) = re.findall(rf"^\| {header} \|.*\n\|[- |]+\|\n((?:\|.*\n)+)", text, flags=re.MULTILINE)
    rows = {}
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        rows |= dict.fromkeys(re.findall(r"`([^`]+)`", cells[0]), cells)
    return rows


def table_keys(header: str, path: Path = README) -> set[str]:
    return set(table_rows(header, path))


def template_environment() -> dict[str, str]:
    """Each variable the template sets: `all` (the Globals) or the functions' short names, in template order."""
    where = dict.fromkeys(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"], "all")
    for name, spec in TEMPLATE["Resources"].items():
        if spec["Type"] == "AWS::Serverless::Function":
            function = name.removesuffix("Function").lower()
            for variable in spec["Properties"].get("Environment", {}).get("Variables", {}):
                where[variable] = f"{where[variable]}, {function}" if variable in where else function
    return where


def emitted_metrics() -> set[str]:
    """Metric names the Lambdas emit (`emit(dimensions, {"Name": value})`) and the instance counts."""
    names = set()
    for path in (ROOT / "functions" / "autoscaler").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "emit":
                (_, counts) = node.args
                assert isinstance(counts, ast.Dict), f"{path.name}: emit() with computed names"
                names |= {key.value for key in counts.keys if isinstance(key, ast.Constant)}
    for path in (ROOT / "userdata").glob("*.sh"):
        names |= set(re.findall(r"^\s*count (\w+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE))
    return names


def test_the_readme_lists_every_environment_variable_the_template_sets_and_for_which_function() -> None:
    rows = table_rows("variable")
    assert {name: cells[1] for name, cells in rows.items()} == template_environment()


def test_the_readme_and_the_deploy_guide_list_every_queue_field() -> None:
    fields = {field.name for field in dataclasses.fields(QueueConfig)}
    assert table_keys("field") == fields
    # The stack refuses launch_template_id (it launches through its own templates).
    assert table_keys("field", ROOT / "docs" / "deploy.md") == fields - {"launch_template_id"}


def test_the_readme_lists_every_tag() -> None:
    tags = {value for name, value in vars(lifecycle).items() if name.endswith("_TAG")}
    assert table_keys("tag") == tags | {"Name"}


def test_the_readme_names_every_metric() -> None:
    metrics = emitted_metrics()
    # The readers above must see the emitters, or the check means nothing.
    assert {"LaunchShortfall", "MetricsApiErrors", "InterruptionNotices"} <= metrics
    assert table_keys("metric") == metrics


def test_the_deploy_guide_lists_every_template_parameter_with_its_default() -> None:
    rows = table_rows("parameter", ROOT / "docs" / "deploy.md")
    assert set(rows) == set(TEMPLATE["Parameters"])
    for name, (_, default, _) in rows.items():
        expected = str(TEMPLATE["Parameters"][name].get("Default", ""))
        # No default, or an empty one: a note in italics, e.g. *(required)*.
        assert default == f"`{expected}`" if expected else default.startswith("*("), (name, default)
