"""One lab VM: QEMU with the instance's identity, its disk layer and the loopback stand-ins.

The command line is a pure function of a `VmSpec`; `Vm` runs it, timestamps every console
line from QEMU's start (those times are the milestones) and powers the guest down over
QMP, as EC2's stop does. The guest reaches the host only through guestfwd relays to
loopback ports: nothing listens beyond loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RELAY = Path(__file__).resolve().parent / "relay.py"
QBOOT = Path("/usr/share/qemu/qboot.rom")
QEMU = "qemu-system-x86_64"
# Link-local user networking: slirp forwards only addresses inside its own network,
# and the IMDS address must be one of them.
NETWORK = "net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15"
IMDS_ADDRESS = "169.254.169.254:80"
AWS_ADDRESS = "169.254.0.10:5000"  # lab/guest/aws.sh
BUILDKITE_ADDRESS = "169.254.0.11:80"  # the agent stand-in's default endpoint
KERNEL_ARGS = "root=/dev/vda ro console=ttyS0,115200 ci.ds=Ec2 net.ifnames=0"


class VmError(RuntimeError):
    """QEMU is missing or the VM cannot start; the message names what."""


@dataclass(frozen=True)
class Ports:
    """The host's loopback ports behind the guest's fixed addresses."""

    imds: int
    aws: int
    buildkite: int


@dataclass(frozen=True)
class VmSpec:
    instance_id: str
    instance_type: str
    kernel: Path
    initrd: Path
    disk: Path  # the instance's own copy-on-write layer
    ports: Ports
    accel: tuple[str, ...]
    qmp: Path
    memory_mib: int = 768


def accelerator(sys_module: Path = Path("/sys/module"), kvm: Path = Path("/dev/kvm")) -> tuple[str, ...]:
    """KVM only with a hardware KVM module and a writable /dev/kvm; TCG otherwise.

    /dev/kvm alone proves nothing: a PVM host has one that runs only PVM guest kernels.
    """
    hardware = (sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists()
    if hardware and os.access(kvm, os.R_OK | os.W_OK):
        return ("-accel", "kvm", "-cpu", "host")
    return ("-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max")


def engine_name(accel: tuple[str, ...]) -> str:
    return "KVM" if "kvm" in accel else "TCG (software emulation)"


def smbios_uuid(instance_id: str) -> str:
    """A stable UUID starting with "ec2", as cloud-init expects of an EC2 instance."""
    digest = hashlib.sha256(instance_id.encode()).hexdigest()
    text = "ec2" + digest[3:32]
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


def _relay(address: str, port: int) -> str:
    return f"guestfwd=tcp:{address}-cmd:{sys.executable} {RELAY} {port}"


def command(spec: VmSpec) -> list[str]:
    uuid = smbios_uuid(spec.instance_id)
    netdev = ",".join(
        [
            "user,id=net0",
            NETWORK,
            _relay(IMDS_ADDRESS, spec.ports.imds),
            _relay(AWS_ADDRESS, spec.ports.aws),
            _relay(BUILDKITE_ADDRESS, spec.ports.buildkite),
        ]
    )
    return [
        QEMU,
        *("-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"),
        *("-monitor", "none", "-qmp", f"unix:{spec.qmp},server=on,wait=off"),
        *spec.accel,
        *("-m", str(spec.memory_mib), "-smp", "2"),
        *("-bios", str(QBOOT), "-kernel", str(spec.kernel), "-initrd", str(spec.initrd)),
        *("-append", KERNEL_ARGS),
        *("-drive", f"file={spec.disk},if=virtio,format=qcow2,cache=unsafe"),
        *("-device", "virtio-rng-pci"),
        # What makes cloud-init call this platform AWS and speak IMDSv2.
        *("-smbios", f"type=1,manufacturer=Amazon EC2,product={spec.instance_type},uuid={uuid},serial={uuid}"),
        *("-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"),
    ]


def require_qemu(which: Callable[[str], str | None] = shutil.which) -> None:
    if which(QEMU) is None or which("qemu-img") is None:
        raise VmError(f"the lab needs {QEMU} and qemu-img: apt-get install qemu-system-x86 qemu-utils")
    if not QBOOT.is_file():
        raise VmError(f"the lab boots with {QBOOT}: apt-get install qemu-system-x86")


def create_layer(base: Path, layer: Path) -> None:
    """The instance's own disk: writes land here, the cached image stays as it is."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(layer)],
        check=True,
    )


class Vm:
    """A running VM; `lines` holds (seconds since QEMU started, console line)."""

    def __init__(self, spec: VmSpec, log_path: Path) -> None:
        self.spec = spec
        self.lines: list[tuple[float, str]] = []
        self._log = log_path.open("a", encoding="utf-8")
        self._changed = threading.Condition()
        self.started = time.monotonic()
        self._process = subprocess.Popen(
            command(spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            moment = time.monotonic() - self.started
            self._log.write(f"{moment:8.2f} {line}\n")
            self._log.flush()
            with self._changed:
                self.lines.append((moment, line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def running(self) -> bool:
        return self._process.poll() is None

    def wait_for(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Until `predicate` holds (True) or QEMU exits or `deadline` (monotonic) passes (False)."""
        with self._changed:
            while not predicate():
                if not self.running() and not self._reader.is_alive():
                    return predicate()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 1.0))
            return True

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def power_down(self) -> None:
        """An ACPI power button press, as EC2's StopInstances sends."""
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.connect(str(self.spec.qmp))
            qmp.recv(4096)
            for execute in ("qmp_capabilities", "system_powerdown"):
                qmp.sendall(json.dumps({"execute": execute}).encode() + b"\n")
                qmp.recv(4096)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.running():
            self._process.kill()
            self._process.wait()
        self._reader.join(5)
        self._log.close()
