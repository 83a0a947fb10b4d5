"""The lab's VM image: Debian 12 from the archive apt already uses, built once and cached.

The cache lives outside the repository (`~/.cache/buildkite-autoscaler-lab`) and is keyed
by a hash of every input (the package list, this file, the guest folder), so a change to
any of them builds a new image and an unchanged checkout reuses the old one. The .deb
files are kept across keys: a rebuild downloads nothing it already has.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent
GUEST_DIR = LAB_DIR / "guest"
SUITE = "bookworm"
# What the instance scripts call, cloud-init and a kernel; busybox and e2fsprogs are for
# overlayroot's initramfs hook (grep and mke2fs), without which overlayroot silently does not apply.
PACKAGES = [
    "systemd-sysv",
    "udev",
    "dbus",
    "busybox",
    "cloud-init",
    "linux-image-amd64",
    "e2fsprogs",
    "zstd",
    "curl",
    "jq",
    "awscli",
    "ca-certificates",
    "iproute2",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "procps",
    "git",
    "unzip",
    "gpg",
    "openssl",
    "overlayroot",
    "less",
    "kmod",
    # The build-space hook drains the agent through a one-command sudo rule, as on the instance.
    "sudo",
]
# Neither man pages, locales nor docs: a smaller, faster image.
EXCLUDES = ("/usr/share/man/*", "/usr/share/locale/*", "/usr/share/doc/*", "/usr/share/info/*")
DISK_SIZE = "3G"
LABEL = "lab-root"
REQUIRED_COMMANDS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "chroot": "coreutils"}


class ImageError(RuntimeError):
    """The image cannot be built; the message names what is missing."""


@dataclass(frozen=True)
class Image:
    """A built image: one kernel and initrd for both root modes, a disk per mode."""

    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def disk(self, root_mode: str) -> Path:
        return self.directory / f"{root_mode}.ext4"

    def complete(self) -> bool:
        return (self.directory / "done").is_file()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "buildkite-autoscaler-lab"


def inputs_key(packages: tuple[str, ...] | list[str] = tuple(PACKAGES), files: list[Path] | None = None) -> str:
    """A hash of everything the image is made from: names and contents, in a stable order."""
    digest = hashlib.sha256("\n".join(packages).encode())
    for path in sorted(files if files is not None else _input_files()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _input_files() -> list[Path]:
    return [Path(__file__).resolve(), *sorted(p for p in GUEST_DIR.iterdir() if p.is_file())]


def missing_tools(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The Debian packages to install for the commands the build needs and this host lacks."""
    return sorted({package for command, package in REQUIRED_COMMANDS.items() if not which(command)})


def mirror_sources() -> Path:
    """apt's own sources: the lab never names a mirror host of its own."""
    for candidate in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if candidate.is_file() and candidate.stat().st_size:
            return candidate
    raise ImageError("no Debian sources in /etc/apt (debian.sources or sources.list): the image needs the archive")


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The uncompressed kernel ELF inside a Debian bzImage (its payload is XZ).

    Booted directly through its PVH entry, it starts in under a second under TCG,
    where decompressing the bzImage in the guest takes about eight.
    """
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ImageError("the kernel image has no XZ payload: not a Debian amd64 bzImage?")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    if not elf.startswith(b"\x7fELF"):
        raise ImageError("the kernel's XZ payload is not an ELF file")
    return elf


def ensure_image(log: Callable[[str], None] = print) -> Image:
    """The cached image for these inputs, built first when missing."""
    image = Image(cache_dir() / f"image-{inputs_key()}")
    if image.complete():
        log(f"lab image: cached {image.directory}")
        return image
    missing = missing_tools()
    if missing:
        raise ImageError(f"the lab image needs these Debian packages: {' '.join(missing)} (apt-get install them)")
    if os.geteuid() != 0:
        raise ImageError("building the lab image runs mmdebstrap and chroot as root: run `make lab` as root once")
    log(f"lab image: building {image.directory} (a few minutes, once)")
    _build(image)
    return image


def _build(image: Image) -> None:
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    # Images of other inputs are stale (about 2 GB each); the debs stay.
    for stale in cache_dir().glob("image-*"):
        shutil.rmtree(stale, ignore_errors=True)
    image.directory.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as work:
        rootfs = Path(work) / "rootfs"
        _bootstrap(rootfs, debs)
        subprocess.run([str(GUEST_DIR / "customize.sh"), str(rootfs), str(GUEST_DIR)], check=True)
        _extract_boot(rootfs, image)
        _make_disk(rootfs, image.disk("ebs"))
        # One kernel and initrd serve both: overlayroot's hook reads this file at boot.
        (rootfs / "etc/overlayroot.local.conf").write_text('overlayroot="tmpfs"\n')
        _make_disk(rootfs, image.disk("overlayroot"))
    (image.directory / "done").touch()


def _bootstrap(rootfs: Path, debs: Path) -> None:
    command = [
        "mmdebstrap",
        "--quiet",
        "--variant=apt",
        "--components=main",
        f"--include={','.join(PACKAGES)}",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDES),
        # Keep the downloaded debs for the next build.
        "--skip=download/empty",
        "--skip=essential/unlink",
        f'--setup-hook=mkdir -p "$1/var/cache/apt/archives" && cp -a {debs}/. "$1/var/cache/apt/archives/"',
        f'--customize-hook=cp -a "$1/var/cache/apt/archives/." {debs}/ && rm -f "$1"/var/cache/apt/archives/*.deb',
        SUITE,
        str(rootfs),
        str(mirror_sources()),
    ]
    subprocess.run(command, check=True)


def _extract_boot(rootfs: Path, image: Image) -> None:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise ImageError(f"no kernel or initrd in {rootfs}/boot after the install")
    image.kernel.write_bytes(vmlinux_from_bzimage(kernels[-1].read_bytes()))
    shutil.copyfile(initrds[-1], image.initrd)


def _make_disk(rootfs: Path, disk: Path) -> None:
    # -d fills the filesystem from a folder: no loop device, no mount.
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", LABEL, "-d", str(rootfs), str(disk), DISK_SIZE],
        check=True,
    )
