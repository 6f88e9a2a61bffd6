"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema validator)."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"


@pytest.fixture
def cluster() -> dict:
    return prepare_config(yaml.safe_load(CLUSTER.read_text()))


def test_cluster_yaml_passes_rays_schema(cluster):
    validate_config(cluster)
    head, workers = cluster["head_node_type"], cluster["available_node_types"]
    gpu_worker = workers["gpu_worker"]
    assert head in workers and gpu_worker["max_workers"] >= gpu_worker["min_workers"] >= 0
    assert cluster["idle_timeout_minutes"] > 0 and cluster["file_mounts"]
    assert any("pip install" in c and "rayssl" in c for c in cluster["setup_commands"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["available_node_types"]["gpu_worker"].update(min_workers="two"),
        lambda c: c.update(idle_timeout_minutes=-1),
        lambda c: c.update(no_such_field=1),
    ],
)
def test_the_validator_rejects_broken_variants(cluster, mutate):
    broken = copy.deepcopy(cluster)
    mutate(broken)
    with pytest.raises(Exception, match="validat|Additional properties|is not of type|minimum"):
        validate_config(broken)
