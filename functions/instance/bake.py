"""The image bake's file step, run as root on the Image Builder build instance (not in a Lambda).

    python3 -m instance.bake install-files --settings FILE.json --arch ARCH [--root DIR]

validates the bake's settings (the stack's ImageBuildSettings JSON), then writes the
files the cloud-config writes at a stock boot, where it writes them, and a settings.env
of install-time values and BK_WARM_NIX_PATHS; nothing is written when a value is bad.
ARCH is x86_64 or arm64 (the calling shell maps `uname -m`). Every path is under --root
(default /), so tests run it against a temporary directory.

Standard library only: the build instance has Ubuntu's python3 and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from instance.files import file_content, image_files, userdata_dir
from instance.settings import SettingsError, bake_values, settings_env

HEADER = "Written by the image bake: install-time values only"


def install_files(root: Path, settings_json: str, arch: str, directory: Path | None = None) -> list[Path]:
    """Write the image's files under `root`; the paths written, in template order."""
    source = directory or userdata_dir()
    # Validated before anything is written: a bad setting leaves nothing half-installed.
    settings = settings_env(bake_values(settings_json, arch), HEADER)
    written = []
    for item in image_files(source):
        target = root / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file_content(source, item.source, settings), encoding="utf-8")
        target.chmod(item.mode)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m instance.bake", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install-files", help="the image's files and its install-time settings.env")
    install.add_argument("--settings", type=Path, required=True, help="the bake's settings, a JSON object")
    install.add_argument("--arch", required=True, help="x86_64 or arm64")
    install.add_argument("--root", type=Path, default=Path("/"), help="where / is (default: /)")
    args = parser.parse_args(argv)
    try:
        written = install_files(args.root, args.settings.read_text(encoding="utf-8"), args.arch)
    except SettingsError as error:
        print(f"bake: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"bake: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
