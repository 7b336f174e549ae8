"""The Ray cluster launcher configs pass Ray's own preparation and schema validation, offline.

`prepare_config` merges a file with the provider's defaults.yaml (shipped inside Ray) and fills the
node types; `validate_config` checks the result against ray-schema.json. Neither talks to a cloud:
what does (`ray up`'s bootstrap step: key pairs, IAM roles, AMIs, subnets) is never called here,
and a guard fails the test if anything opens a network connection.
"""

import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: p for p in sorted((ROOT / "cluster_configs").glob("*.yaml"))}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a cluster config check tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _prepared(name: str) -> tuple[dict, dict]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CONFIGS[name].read_text())
    config = prepare_config(raw)
    validate_config(config)
    return raw, config


def test_the_three_providers_are_there():
    assert set(CONFIGS) == {"aws", "gcp", "local"}


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_config_prepares_and_validates_offline(name, no_network):
    import ray

    raw, config = _prepared(name)
    assert config["provider"]["type"] == name
    # The project reaches every node and is installed there, with the Ray version of this machine.
    assert raw["file_mounts"] == {"~/dmdl-dist": "."}
    setup = "\n".join(config["head_setup_commands"] + config["worker_setup_commands"])
    assert 'pip install -e "$HOME/dmdl-dist[gpu]"' in setup
    assert f"ray[default,train,tune]=={ray.__version__}" in setup
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cloud_configs_have_a_cpu_head_and_gpu_worker_types(name, no_network):
    _, config = _prepared(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 2
    for node_type in gpu_types.values():
        assert node_type["min_workers"] == 0 and 0 < node_type["max_workers"] <= config["max_workers"]
    if name == "aws":
        instances = {t["node_config"]["InstanceType"] for t in gpu_types.values()}
        assert {"g5.xlarge", "p4d.24xlarge"} <= instances
    else:
        n1 = [t for t in gpu_types.values() if t["node_config"]["machineType"].startswith("n1-")]
        assert n1 and all(t["node_config"]["guestAccelerators"][0]["acceleratorCount"] == t["resources"]["GPU"]
                          for t in n1)
        assert all(t["node_config"]["scheduling"] == [{"onHostMaintenance": "TERMINATE"}] for t in gpu_types.values())


def test_local_config_lists_machines_by_ip(no_network):
    raw, config = _prepared("local")
    provider = raw["provider"]
    assert provider["head_ip"] and provider["worker_ips"]
    assert set(raw["auth"]) == {"ssh_user", "ssh_private_key"}
    assert "available_node_types" not in raw  # a manual local cluster has no node types of its own
    (node_type,) = config["available_node_types"].values()  # the one prepare_config makes for it
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])


def test_a_broken_config_fails_validation(no_network):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CONFIGS["aws"].read_text())
    raw["available_node_types"]["gpu_1x_a10g"]["resources"]["GPU"] = 0.5  # the schema wants integers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_head_keeps_its_dashboard_on_loopback(name):
    """The dashboard accepts jobs: it stays on the head's 127.0.0.1 (`ray dashboard` tunnels it over SSH)."""
    raw = yaml.safe_load(CONFIGS[name].read_text())
    starts = [c for c in raw["head_start_ray_commands"] if "ray start --head" in c]
    assert starts and all("--dashboard-host=127.0.0.1" in c for c in starts)
