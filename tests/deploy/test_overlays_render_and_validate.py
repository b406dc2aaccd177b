"""Every Kustomize overlay in deploy/ renders offline and is valid against Kubernetes schemas.

``kubectl kustomize`` renders (no cluster is contacted); ``kubernetes-validate`` checks each
object against the JSON schemas it ships, in strict mode (unknown fields are errors).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

OVERLAYS = Path(__file__).resolve().parents[2] / "deploy" / "kustomize" / "overlays"
# The oldest Kubernetes the manifests target: gRPC probes are GA from 1.27.
KUBERNETES_VERSION = "1.27.0"


def render(overlay: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` makes of an overlay."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, (
        "kubectl is needed to render deploy/ overlays: `make tools` installs Debian's "
        "kubernetes-client, or run `apt-get install kubernetes-client`"
    )
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{overlay.name} does not render:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kinds(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects by (kind, name)."""
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize("overlay", ["central", "plant-relay", "dealership-relay"])
def test_overlay_renders_and_validates(overlay: str) -> None:
    objects = render(OVERLAYS / overlay)
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{overlay}: {name} is invalid at {list(error.path)}: {error.message}")


def test_every_overlay_directory_is_tested() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == [
        "central",
        "dealership-relay",
        "plant-relay",
    ]


def test_central_runs_several_replicas_on_postgresql() -> None:
    objects = kinds(render(OVERLAYS / "central"))
    server = objects["Deployment", "staffel-server"]
    assert server["spec"]["replicas"] >= 2
    hpa = objects["HorizontalPodAutoscaler", "staffel-server"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "staffel-server"
    assert hpa["spec"]["minReplicas"] >= 2
    assert ("Service", "staffel-server") in objects
    assert ("StatefulSet", "staffel-postgres") in objects
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert any(a.startswith("--database-url=postgresql") for a in container["args"])
    # Key material is referenced, never shipped: no Secret object is rendered.
    assert not [key for key in objects if key[0] == "Secret"]
    volumes = {v["name"]: v for v in server["spec"]["template"]["spec"]["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "staffel-keys"
    assert volumes["blobs"]["persistentVolumeClaim"]["claimName"] == "staffel-blobs"


@pytest.mark.parametrize("overlay", ["plant-relay", "dealership-relay"])
def test_edge_relay_has_cache_volume_policy_limits_and_probes(overlay: str) -> None:
    objects = kinds(render(OVERLAYS / overlay))
    relay = objects["Deployment", "staffel-relay"]
    assert ("PersistentVolumeClaim", "staffel-relay-cache") in objects
    assert ("NetworkPolicy", "staffel-relay") in objects
    container = relay["spec"]["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    assert {"cpu", "memory"} <= limits.keys()
    assert container["readinessProbe"]["grpc"]["port"] == 7001
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_edge_sites_are_sized_differently() -> None:
    def memory_limit(overlay: str) -> str:
        relay = kinds(render(OVERLAYS / overlay))["Deployment", "staffel-relay"]
        limit: str = relay["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "memory"
        ]
        return limit

    assert memory_limit("plant-relay") != memory_limit("dealership-relay")
