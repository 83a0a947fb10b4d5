"""What lands where on an instance: the write_files of the cloud-config template.

The renderer embeds these files in the user-data; the image bake writes the same
ones to disk. Both take each file's content from `file_content`, so a baked image
and a stock boot get the same bytes.

Standard library only: the bake runs this with a bare python3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = "cloud-config.yaml.tmpl"
# Not a file of userdata/: rendered per launch, or written by the bake.
SETTINGS_FILE = "settings.env"

# A file of userdata/ by its relative path (lib/common.sh): no "." or ".." part and
# no leading "/", so a placeholder cannot reach outside userdata/.
_SOURCE = r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*"
PLACEHOLDER = re.compile(rf"@@({_SOURCE})@@")
# One write_files entry of the template: path, permissions, file.
_WRITE_FILE = re.compile(rf'- path: (\S+)\n\s+permissions: "(0[0-7]{{3}})"\n\s+content: @@({_SOURCE})@@')


@dataclass(frozen=True)
class ImageFile:
    path: str  # absolute, as in the cloud-config
    mode: int
    source: str  # path under userdata/, or SETTINGS_FILE


def userdata_dir() -> Path:
    """Where the userdata/ files are, in the repository or in the Lambda artifact."""
    package = Path(__file__).resolve().parent
    # Lambda artifact: instance/ and userdata/ side by side at its root.
    # Repository: functions/instance/ and userdata/ at the top.
    for candidate in (package.parent / "userdata", package.parent.parent / "userdata"):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"userdata/{TEMPLATE} not found next to {package} or its parent")


def image_files(directory: Path) -> list[ImageFile]:
    """The files the cloud-config writes, settings.env among them, from its template."""
    template = (directory / TEMPLATE).read_text(encoding="utf-8")
    return [ImageFile(path, int(mode, 8), source) for path, mode, source in _WRITE_FILE.findall(template)]


def file_content(directory: Path, source: str, settings: str) -> str:
    """What the instance gets for a placeholder: `settings` for settings.env, else the file."""
    return settings if source == SETTINGS_FILE else instance_file(directory, source)


def instance_file(directory: Path, name: str) -> str:
    """A file of userdata/ as the instance gets it, from the user-data or a bake alike:
    without its comment lines (the shebang stays), which would take a third of EC2's
    16 KB user-data limit. The files have no here-documents, so a line that starts with
    "#" is always a comment."""
    lines = (directory / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for index, line in enumerate(lines) if not _is_comment(line, index))


def _is_comment(line: str, index: int) -> bool:
    return line.lstrip().startswith("#") and not (index == 0 and line.startswith("#!"))
