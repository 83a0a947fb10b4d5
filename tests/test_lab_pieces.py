"""The instance lab's pieces without a VM: the IMDS, the agent API, the AWS front, the
milestones, QEMU's command line, the image's inputs. The VM scenarios run in `make lab`."""

from __future__ import annotations

import gzip
import http.client
import json
import lzma
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lab import image, milestones, vm
from lab.agent_api import AgentApi, AgentApiServer
from lab.aws_front import Front, action_of
from lab.imds import ImdsServer, InstanceState, Metadata
from lab.scenarios import SCENARIOS, by_name, hint

NOW = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


def state(**changes: object) -> InstanceState:
    base = InstanceState(instance_id="i-0123456789abcdef0", instance_type="c7i.large", user_data=b"#cloud-config\n")
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def token(metadata: Metadata, ttl: str = "300", now: datetime = NOW) -> str:
    answer = metadata.answer("PUT", "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": ttl}, now)
    assert answer.status == 200
    return answer.body.decode()


def get(metadata: Metadata, path: str, auth: str, now: datetime = NOW) -> tuple[int, str]:
    answer = metadata.answer("GET", path, {"x-aws-ec2-metadata-token": auth}, now)
    return answer.status, answer.body.decode()


# ---------------------------------------------------------------- IMDS


def test_imds_token_echoes_its_ttl() -> None:
    metadata = Metadata(state)
    answer = metadata.answer("PUT", "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": "21600"}, NOW)
    assert dict(answer.headers)["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"


@pytest.mark.parametrize("ttl", ["0", "21601", "", "ten"])
def test_imds_token_refuses_a_ttl_out_of_range(ttl: str) -> None:
    answer = Metadata(state).answer("PUT", "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": ttl}, NOW)
    assert answer.status == 400


def test_imds_token_refused_through_a_proxy() -> None:
    headers = {"x-aws-ec2-metadata-token-ttl-seconds": "60", "x-forwarded-for": "10.0.0.1"}
    assert Metadata(state).answer("PUT", "/latest/api/token", headers, NOW).status == 403


def test_imds_without_a_token_is_401() -> None:
    assert get(Metadata(state), "/latest/meta-data/instance-id", "")[0] == 401


def test_imds_expired_token_is_401() -> None:
    metadata = Metadata(state)
    value = token(metadata, "1")
    assert get(metadata, "/latest/meta-data/instance-id", value, NOW + timedelta(seconds=2))[0] == 401


def test_imds_serves_the_instance_id_under_every_version() -> None:
    metadata = Metadata(state)
    value = token(metadata)
    assert get(metadata, "/2021-03-23/meta-data/instance-id", value) == (200, "i-0123456789abcdef0")


def test_imds_lists_subtrees_with_a_trailing_slash() -> None:
    metadata = Metadata(state)
    listing = get(metadata, "/latest/meta-data/", token(metadata))[1].splitlines()
    assert "placement/" in listing


def test_imds_serves_the_user_data() -> None:
    metadata = Metadata(state)
    assert get(metadata, "/latest/user-data", token(metadata)) == (200, "#cloud-config\n")


def test_imds_no_spot_notice_is_404() -> None:
    metadata = Metadata(state)
    assert get(metadata, "/latest/meta-data/spot/instance-action", token(metadata))[0] == 404


def test_imds_reads_the_state_at_every_request() -> None:
    current = state(lifecycle="spot")
    metadata = Metadata(lambda: current)
    value = token(metadata)
    current.spot_action = {"action": "terminate", "time": "2026-12-05T06:02:00Z"}
    status, body = get(metadata, "/latest/meta-data/spot/instance-action", value)
    assert (status, json.loads(body)["action"]) == (200, "terminate")


def test_imds_serves_instance_tags() -> None:
    metadata = Metadata(lambda: state(tags={"buildkite-autoscaler:on-exit": "stop"}))
    value = token(metadata)
    assert get(metadata, "/latest/meta-data/tags/instance/buildkite-autoscaler:on-exit", value) == (200, "stop")


def test_imds_credentials_expire_hours_ahead() -> None:
    metadata = Metadata(state)
    value = token(metadata)
    role = get(metadata, "/latest/meta-data/iam/security-credentials/", value)[1]
    credentials = json.loads(get(metadata, f"/latest/meta-data/iam/security-credentials/{role}", value)[1])
    assert credentials["Expiration"] > "2026-12-05T08:00:00Z"


def test_imds_identity_document_names_the_instance() -> None:
    metadata = Metadata(state)
    document = json.loads(get(metadata, "/latest/dynamic/instance-identity/document", token(metadata))[1])
    assert document["instanceId"] == "i-0123456789abcdef0"


def test_imds_over_http_on_loopback() -> None:
    with ImdsServer(Metadata(state)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        value = connection.getresponse().read().decode()
        connection.request("GET", "/latest/meta-data/instance-type", headers={"X-aws-ec2-metadata-token": value})
        assert connection.getresponse().read() == b"c7i.large"


# ---------------------------------------------------------------- agent API


def registered(api: AgentApi, queue: str = "lab-x86") -> str:
    status, body = api.handle("POST", "/v3/register", "Token reg", {"name": "a-1", "tags": [f"queue={queue}"]})
    assert status == 200
    api.handle("POST", "/v3/connect", f"Token {body['access_token']}", {})
    return str(body["access_token"])


def test_agent_api_refuses_a_wrong_registration_token() -> None:
    assert AgentApi("reg").handle("POST", "/v3/register", "Token nope", {"name": "a"})[0] == 401


def test_agent_api_metrics_count_connected_agents() -> None:
    api = AgentApi("reg")
    registered(api)
    assert api.metrics()["agents"]["queues"]["lab-x86"] == {"idle": 1, "busy": 0, "total": 1}


def test_agent_api_metrics_count_scheduled_jobs() -> None:
    api = AgentApi("reg")
    api.schedule("lab-x86", "true")
    assert api.handle("GET", "/v3/metrics", "Token reg", {})[1]["jobs"]["queues"]["lab-x86"]["scheduled"] == 1


def test_agent_api_ping_hands_out_a_job_of_the_agents_queue() -> None:
    api = AgentApi("reg")
    api.schedule("other", "false")
    job = api.schedule("lab-x86", "true")
    access = registered(api)
    assert api.handle("GET", "/v3/ping", f"Token {access}", {})[1]["job"]["id"] == job.id


def test_agent_api_finish_records_the_exit_status() -> None:
    api = AgentApi("reg")
    job = api.schedule("lab-x86", "exit 75")
    access = registered(api)
    api.handle("GET", "/v3/ping", f"Token {access}", {})
    api.handle("PUT", f"/v3/jobs/{job.id}/finish", f"Token {access}", {"exit_status": 75})
    assert (job.state, job.exit_status) == ("finished", 75)


def test_agent_api_disconnected_agents_leave_the_metrics() -> None:
    api = AgentApi("reg")
    access = registered(api)
    api.handle("POST", "/v3/disconnect", f"Token {access}", {})
    assert api.metrics()["agents"]["queues"]["lab-x86"]["total"] == 0


# ---------------------------------------------------------------- AWS front


def test_front_reads_the_ec2_action() -> None:
    assert action_of(b"Action=CreateTags&Version=2016-11-15&DryRun=true") == "CreateTags"


def test_front_refuses_as_ec2_does() -> None:
    front = Front(refused={"CreateTags"})
    status, body = front.refusal(b"Action=CreateTags&DryRun=true") or (0, b"")
    assert (status, b"UnauthorizedOperation" in body) == (403, True)


def test_front_passes_other_actions_and_tells_of_them() -> None:
    heard: list[str] = []
    front = Front(refused={"CreateTags"}, on_action=lambda action, _: heard.append(action))
    assert (front.refusal(b"Action=StopInstances"), heard) == (None, ["StopInstances"])


# ---------------------------------------------------------------- milestones


CONSOLE = [
    (0.6, "[    0.000000] Linux version 6.1.0-57-amd64"),
    (50.0, "Cloud-init v. 22.4.2 finished at Sat, 05 Dec 2026"),
    (60.0, "buildkite-bootstrap: step load_settings"),
    (61.5, "buildkite-bootstrap: step check_tag_permission"),
    (62.0, "[   62.0] buildkite-bootstrap[412]: buildkite-bootstrap: step load_settings"),
    (72.0, "buildkite-bootstrap: step start_agent"),
    (75.0, "buildkite-agent: lab-x86-i-1-1 registered and connected"),
    (93.0, "buildkite-bootstrap: complete: buildkite-agent is running"),
    (99.0, "buildkite-agent: lab-x86-i-1-1 running job job-1"),
    (170.0, "[  170.1] reboot: Power down"),
]


def test_milestones_in_seconds_from_the_vm_start() -> None:
    assert milestones.milestones(CONSOLE) == {
        "kernel": 0.6,
        "cloud-init finished": 50.0,
        "agent started": 75.0,
        "bootstrap complete": 93.0,
        "first job": 99.0,
        "power-off": 170.0,
    }


def test_milestones_power_off_is_qemus_exit_when_the_console_misses_it() -> None:
    assert milestones.milestones(CONSOLE[:3], exit_time=80.0)["power-off"] == 80.0


def test_step_times_skip_the_journals_repeat() -> None:
    assert milestones.step_times(CONSOLE) == [
        ("load_settings", 1.5),
        ("check_tag_permission", 10.5),
        ("start_agent", 21.0),
    ]


def test_step_times_end_a_failed_step_at_its_failure() -> None:
    lines = [(1.0, "buildkite-bootstrap: step check_tag_permission"), (12.0, "buildkite-bootstrap: FAILED step=x")]
    assert milestones.step_times(lines) == [("check_tag_permission", 11.0)]


def test_report_names_the_scenario() -> None:
    text = milestones.report("baked-ebs", milestones.timings(CONSOLE))
    assert text.startswith("[baked-ebs] milestones (s from VM start): kernel 1s, cloud-init finished 50s")


# ---------------------------------------------------------------- QEMU


def test_accelerator_is_tcg_with_a_kvm_device_but_no_hardware_module(tmp_path: Path) -> None:
    (tmp_path / "kvm_pvm").mkdir()
    device = tmp_path / "kvm"
    device.touch()
    assert vm.accelerator(tmp_path, device)[1].startswith("tcg")


def test_accelerator_is_kvm_with_a_hardware_module(tmp_path: Path) -> None:
    (tmp_path / "kvm_intel").mkdir()
    device = tmp_path / "kvm"
    device.touch()
    assert vm.accelerator(tmp_path, device) == ("-accel", "kvm", "-cpu", "host")


def test_smbios_uuid_starts_with_ec2_and_is_stable() -> None:
    uuid = vm.smbios_uuid("i-0123456789abcdef0")
    assert (uuid[:3], uuid == vm.smbios_uuid("i-0123456789abcdef0"), len(uuid)) == ("ec2", True, 36)


def spec(tmp_path: Path) -> vm.VmSpec:
    return vm.VmSpec(
        instance_id="i-1",
        instance_type="c7i.large",
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd.img",
        disk=tmp_path / "i-1.qcow2",
        ports=vm.Ports(imds=8001, aws=8002, buildkite=8003),
        accel=("-accel", "tcg"),
        qmp=tmp_path / "qmp",
    )


def test_qemu_looks_like_ec2_to_cloud_init(tmp_path: Path) -> None:
    command = vm.command(spec(tmp_path))
    smbios = command[command.index("-smbios") + 1]
    assert "manufacturer=Amazon EC2,product=c7i.large" in smbios


def test_qemu_forwards_the_guest_addresses_to_loopback_ports_only(tmp_path: Path) -> None:
    netdev = vm.command(spec(tmp_path))[vm.command(spec(tmp_path)).index("-netdev") + 1]
    forwards = re.findall(r"guestfwd=tcp:([\d.]+:\d+)-cmd:\S+ \S+relay.py (\d+)", netdev)
    assert (forwards, "hostfwd" in netdev) == (
        [("169.254.169.254:80", "8001"), ("169.254.0.10:5000", "8002"), ("169.254.0.11:80", "8003")],
        False,
    )


def test_require_qemu_names_the_package() -> None:
    with pytest.raises(vm.VmError, match="apt-get install qemu-system-x86 qemu-utils"):
        vm.require_qemu(lambda _: None)


# ---------------------------------------------------------------- image


def test_image_key_changes_with_a_guest_file(tmp_path: Path) -> None:
    script = tmp_path / "customize.sh"
    script.write_text("a")
    first = image.inputs_key(["curl"], [script])
    script.write_text("b")
    assert first != image.inputs_key(["curl"], [script])


def test_image_key_changes_with_the_packages(tmp_path: Path) -> None:
    assert image.inputs_key(["curl"], []) != image.inputs_key(["curl", "jq"], [])


def test_missing_tools_name_their_packages() -> None:
    assert image.missing_tools(lambda command: None if command == "mmdebstrap" else "/bin/x") == ["mmdebstrap"]


def test_vmlinux_is_cut_from_the_bzimage() -> None:
    elf = b"\x7fELF" + b"kernel" * 10
    assert image.vmlinux_from_bzimage(b"setup-code" + lzma.compress(elf, format=lzma.FORMAT_XZ)) == elf


def test_vmlinux_needs_an_xz_payload() -> None:
    with pytest.raises(image.ImageError, match="no XZ payload"):
        image.vmlinux_from_bzimage(b"not a kernel")


def test_the_cache_is_outside_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image.cache_dir() == tmp_path / "buildkite-autoscaler-lab"


# ---------------------------------------------------------------- scenarios


def test_every_issue_path_has_a_scenario() -> None:
    assert [s.name for s in SCENARIOS] == [
        "baked-ebs",
        "baked-overlayroot",
        "warm-pool",
        "spot-interruption",
        "refused-createtags",
        "low-build-space",
    ]


def test_an_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="baked-ebs"):
        by_name("nope")


def test_the_idle_race_is_named_when_mark_complete_is_killed() -> None:
    assert "idle-timeout race" in hint("mark_complete", "143")


def test_the_agent_api_serves_metrics_to_the_scaler_over_http() -> None:
    api = AgentApi("reg")
    api.schedule("lab-x86", "true")
    with AgentApiServer(api) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", "/v3/metrics", headers={"Authorization": "Token reg"})
        body = json.loads(connection.getresponse().read())
    assert body["jobs"]["queues"]["lab-x86"]["scheduled"] == 1


def test_imds_serves_gzip_user_data_byte_for_byte() -> None:
    compressed = gzip.compress(b"#cloud-config\n" * 50, mtime=0)
    metadata = Metadata(lambda: state(user_data=compressed))
    assert metadata.answer("GET", "/latest/user-data", {"x-aws-ec2-metadata-token": token(metadata)}, NOW).body == (
        compressed
    )


def test_the_readme_names_every_lab_scenario() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert [s.name for s in SCENARIOS if f"| `{s.name}` |" not in readme] == []


def test_ci_installs_what_the_lab_needs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert [p for p in ("qemu-system-x86", "qemu-utils", "mmdebstrap") if p not in ci] == []


def test_an_agent_exit_during_start_agent_is_named() -> None:
    assert "during start_agent's checks" in hint("start_agent", "143")
