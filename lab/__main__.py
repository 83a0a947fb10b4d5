"""`python -m lab`: run the lab's scenarios (all by default), one VM at a time."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from lab.image import Image, ImageError, ensure_image
from lab.scenarios import SCENARIOS, Outcome, Scenario, ScenarioFailed, by_name
from lab.vm import VmError, accelerator, engine_name, require_qemu
from lab.world import world


def log(message: str) -> None:
    print(message, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make lab", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--scenario", action="append", default=[], help="run this scenario (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep console logs and disk layers here")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    # A stopped run still ends its VM: SystemExit unwinds the scenario's contexts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if args.list:
        for scenario in SCENARIOS:
            log(f"{scenario.name:20} {scenario.summary}")
        return 0
    try:
        chosen = [by_name(name) for name in args.scenario] or list(SCENARIOS)
        require_qemu()
        started = time.monotonic()
        image = ensure_image(log)
        log(f"lab image ready in {time.monotonic() - started:.0f}s; engine: {engine_name(accelerator())}")
    except (KeyError, ImageError, VmError) as error:
        log(f"lab: {error}")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="buildkite-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"lab: console logs in {workdir}")
    failures = [name for name in (run_one(s, image, workdir) for s in chosen) if name]
    log(
        f"lab: {len(chosen) - len(failures)} of {len(chosen)} scenarios passed"
        + (f"; failed: {failures}" if failures else "")
    )
    return 1 if failures else 0


def run_one(scenario: Scenario, image: Image, workdir: Path) -> str:
    """Runs one scenario in a world of its own; returns its name when it failed."""
    started = time.monotonic()
    outcome = Outcome(scenario.name)
    log(f"[{outcome.name}] {scenario.summary}")
    directory = workdir / outcome.name
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with world(image, directory, scenario.queue, log) as lab:
            scenario.run(lab, outcome)
    except ScenarioFailed as failure:
        log(f"FAIL {failure} ({time.monotonic() - started:.0f}s; console in {directory})")
        return outcome.name
    except Exception:  # noqa: BLE001 - one scenario's crash must not hide the others' results
        log(f"FAIL [{outcome.name}] crashed ({time.monotonic() - started:.0f}s; console in {directory}):")
        log(traceback.format_exc())
        return outcome.name
    log(f"PASS [{outcome.name}] in {time.monotonic() - started:.0f}s")
    return ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
