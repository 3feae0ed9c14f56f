"""Kubernetes manifests of ``export --format triton --k8s``: Deployment, Service and HPA validated
offline against the Kubernetes schemas (``kubernetes-validate``, strict: unknown keys fail);
the KServe InferenceService checked for its required fields (no schema is published for it).
Nothing here talks to a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bgm_deploy.cli import cli
from bgm_deploy.serve.kubernetes import (
    FILES,
    KUBERNETES_VERSION,
    KubernetesOptions,
    manifests,
    to_yaml,
    write_manifests,
)
from model.errors import UsageError

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

CASES = {
    "pvc, cpu": KubernetesOptions("pvc://bgm-models/repo"),
    "s3, gpu, namespace": KubernetesOptions("s3://bucket/models", gpu=True, namespace="matting", replicas=2,
                                            max_replicas=8, version="25.01-py3", cpu="500m", memory="2Gi"),
    "gs, whole claim": KubernetesOptions("gs://bucket/path/to/models", name="bgm-hd"),
}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("case", CASES)
def test_manifests_validate_against_the_kubernetes_schemas(case: str) -> None:
    options = CASES[case]
    for name, manifest in manifests(options).items():
        assert yaml.safe_load(to_yaml(manifest)) == manifest, f"{name}: the YAML does not read back the same"
        if manifest["kind"] == "InferenceService":
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelled_key() -> None:
    deployment = manifests(CASES["pvc, cpu"])["deployment.yaml"]
    _container(deployment)["readinesProbe"] = _container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_triton_with_probes_ports_and_resources() -> None:
    cpu = _container(manifests(CASES["pvc, cpu"])["deployment.yaml"])
    assert cpu["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert {p["name"]: p["containerPort"] for p in cpu["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert cpu["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert cpu["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = cpu["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 300  # time for the model to load
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert "--model-repository=/models" in cpu["args"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "repo"} in cpu["volumeMounts"]
    gpu_deployment = manifests(CASES["s3, gpu, namespace"])["deployment.yaml"]
    gpu = _container(gpu_deployment)
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["image"].endswith(":25.01-py3") and "--model-repository=s3://bucket/models" in gpu["args"]
    assert gpu_deployment["metadata"]["namespace"] == "matting"
    assert not any(v.get("persistentVolumeClaim") for v in gpu_deployment["spec"]["template"]["spec"]["volumes"])


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    options = CASES["s3, gpu, namespace"]
    found = manifests(options)
    assert found["service.yaml"]["spec"]["selector"] == {"app": "bgm"}
    assert [p["port"] for p in found["service.yaml"]["spec"]["ports"]] == [8000, 8001, 8002]
    hpa = found["hpa.yaml"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bgm"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)


def test_inference_service_has_kserves_required_fields() -> None:
    """Structural only: KServe publishes no JSON schema (documented as not schema-validated)."""
    for options in CASES.values():
        service = manifests(options)["inferenceservice.yaml"]
        assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
        assert service["metadata"]["name"] == options.name
        model = service["spec"]["predictor"]["model"]
        assert model["modelFormat"] == {"name": "triton"}
        assert model["storageUri"] == options.model_uri
        assert model["protocolVersion"] == "v2" and model["runtimeVersion"] == options.version
        assert ("nvidia.com/gpu" in model["resources"]["limits"]) == options.gpu


@pytest.mark.parametrize(("fields", "message"), [
    ({"model_uri": "http://host/models"}, "--model-uri"),
    ({"model_uri": "pvc://"}, "--model-uri"),
    ({"model_uri": "s3://b/m", "name": "Bad_Name"}, "--k8s-name"),
    ({"model_uri": "s3://b/m", "replicas": 5, "max_replicas": 2}, "--replicas 5"),
    ({"model_uri": "s3://b/m", "cpu": "two"}, "--k8s-cpu"),
    ({"model_uri": "s3://b/m", "version": "nvcr.io/x:1"}, "--triton-version"),
])
def test_bad_options_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        KubernetesOptions(**fields)


def test_write_manifests_refuses_to_replace_without_overwrite(tmp_path: Path) -> None:
    written = write_manifests(tmp_path / "k8s", CASES["pvc, cpu"])
    assert sorted(Path(p).name for p in written) == sorted(FILES)
    for path in written:
        text = Path(path).read_text()
        assert text.startswith("# bgm-deploy") and "not yet applied to a real cluster" in text
        kind = yaml.safe_load(text)["kind"]
        assert kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService")
    with pytest.raises(UsageError, match="already exists"):
        write_manifests(tmp_path / "k8s", CASES["pvc, cpu"])
    write_manifests(tmp_path / "k8s", CASES["gs, whole claim"], overwrite=True)


def test_export_cli_checks_k8s_options_before_exporting(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in (
        (["--format", "triton", "-o", str(tmp_path / "m"), "--k8s", str(tmp_path / "k")], "--k8s needs --model-uri"),
        (["--format", "triton", "-o", str(tmp_path / "m"), "--model-uri", "s3://b/m"], "--model-uri applies with --k8s"),
        (["--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--k8s", str(tmp_path / "k")], "--k8s and --model-uri apply with --format triton"),
    ):
        result = runner.invoke(cli, ["export", *args])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert not (tmp_path / "m").exists() and not (tmp_path / "k").exists()


def test_export_triton_writes_manifests_with_a_gpu_request(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "--format", "triton", "-o", str(tmp_path / "models"), "--resolution",
                                      "320x256", "--triton-device", "gpu", "--k8s", str(tmp_path / "k8s"),
                                      "--model-uri", "pvc://bgm-models/models", "--triton-version", "25.01-py3"])
    assert result.exit_code == 0, result.output
    assert "kubernetes:" in result.output and (tmp_path / "models" / "bgm" / "config.pbtxt").is_file()
    deployment = yaml.safe_load((tmp_path / "k8s" / "deployment.yaml").read_text())
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    assert _container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _container(deployment)["image"].endswith(":25.01-py3")
