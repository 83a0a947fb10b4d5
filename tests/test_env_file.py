"""events/env.json, the env-vars file for `sam local invoke` and `make invoke-*`, deploys what the template deploys."""

from __future__ import annotations

import json
from pathlib import Path

from simulation.deployment import load_template

ROOT = Path(__file__).resolve().parent.parent


def test_every_value_the_template_fixes_is_the_env_files_too() -> None:
    env_file = json.loads((ROOT / "events" / "env.json").read_text(encoding="utf-8"))
    template = load_template()
    fixed = {
        (name, variable): value
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        for variable, value in resource["Properties"].get("Environment", {}).get("Variables", {}).items()
        if isinstance(value, str)  # a literal, not a parameter the deployer chooses
    }
    assert ("ScalerFunction", "READY_GRACE_SECONDS") in fixed
    for (function, variable), value in fixed.items():
        assert env_file.get(function, {}).get(variable, value) == value, variable
