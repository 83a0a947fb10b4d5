"""The docs' commands run as written: SAM CLI lives in the project's venv, not on the PATH."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A sam command to type: at the start of a code line, after `&&`, or opening an inline code span.
PLAIN_SAM = re.compile(r"(?m)(?:^|&& |`)sam (?:build|deploy|delete|local|validate|logs|sync)\b")


def test_every_sam_command_the_docs_give_runs_the_projects_sam() -> None:
    found = {path.name: PLAIN_SAM.findall(path.read_text(encoding="utf-8")) for path in DOCS}
    # The README's opening names the product's one deploy; everything to type is the venv's.
    assert found.pop("README.md") == ["`sam deploy", "`sam deploy"]
    assert all(not commands for commands in found.values()), found
    assert ".venv-sam/bin/sam deploy --guided" in (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
