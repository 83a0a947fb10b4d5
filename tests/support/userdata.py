"""What the user-data is rendered from in tests: instance settings, two queues, and the repository
whose userdata/ scripts it carries."""

from __future__ import annotations

from pathlib import Path

from autoscaler.config import QueueConfig, UserDataSettings

REPO = Path(__file__).resolve().parent.parent.parent
PUBLIC_KEY = "fleet-cache-1:" + "Q" * 43 + "="

SETTINGS = UserDataSettings(
    region="us-west-2",
    agent_token_parameter="/bk/agent-token",
    ssh_key_parameter="/bk/ssh-key",
    signing_key_parameter="/bk/nix-signing-key",
    cache_bucket="fleet-nix-cache",
    cache_region="eu-central-1",
    cache_public_key=PUBLIC_KEY,
)
QUEUES = {
    "x86": QueueConfig(
        name="nixos-x86-aws",
        architecture="x86_64",
        launch_template_id="lt-0123",
        instance_types=("m7i.4xlarge", "c7a.4xlarge"),
        subnet_ids=("subnet-1",),
        max_instances=4,
    ),
    "arm": QueueConfig(
        name="nixos-arm-aws",
        architecture="arm64",
        launch_template_id="lt-0456",
        instance_types=("c7g.4xlarge", "m7gd.4xlarge"),
        subnet_ids=("subnet-1",),
        max_instances=2,
    ),
}
