"""Kubernetes manifests that run a Triton model repository (``export --format triton --k8s DIR``).

Four files, built as plain dicts and written as YAML:

* ``deployment.yaml`` — the Triton container (image and version are parameters), ports 8000
  (HTTP), 8001 (gRPC) and 8002 (metrics), probes on Triton's health endpoints with time for
  the model to load (as Triton's Helm chart: liveness ``/v2/health/live``; readiness and a
  startup probe of 30 x 10 s on ``/v2/health/ready``), resource requests and limits (one
  ``nvidia.com/gpu`` when the model's instances are GPU instances), ``/dev/shm`` in memory
  (the Python backend passes tensors there), and the repository from a PersistentVolumeClaim
  (``pvc://CLAIM/PATH``) or read by Triton itself from object storage (``s3://``, ``gs://``;
  credentials from an optional secret ``<name>-storage``);
* ``service.yaml`` — a ClusterIP Service with the three ports;
* ``hpa.yaml`` — an ``autoscaling/v2`` HorizontalPodAutoscaler on CPU utilisation;
* ``inferenceservice.yaml`` — the same model as a KServe ``InferenceService``
  (``serving.kserve.io/v1beta1``, model format ``triton``, ``storageUri``); Triton's HTTP/gRPC
  API is KServe's v2 protocol.

Deployment, Service and HPA are validated against the Kubernetes schemas in the test suite
(``kubernetes-validate``, :data:`KUBERNETES_VERSION`); the InferenceService is checked for its
required fields only (no schema is published for it). None of them has been applied to a
real cluster.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exporters.atomic import atomic_write_text
from model.errors import UsageError

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver"
DEFAULT_VERSION = "24.10-py3"
KUBERNETES_VERSION = "1.37.0"  # the schemas the manifests are validated against
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
MOUNT = "/models"
URI_SCHEMES = ("s3", "gs", "pvc")
FILES = ("deployment.yaml", "service.yaml", "hpa.yaml", "inferenceservice.yaml")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


@dataclass(frozen=True)
class KubernetesOptions:
    """What the manifests say.

    Attributes:
        name: the Deployment/Service/HPA/InferenceService name (a DNS label).
        model_uri: where the repository lives: ``pvc://CLAIM[/PATH]``, ``s3://BUCKET/PATH``
            or ``gs://BUCKET/PATH`` (the folder ``export`` wrote, uploaded there).
        image, version: the Triton container image and tag.
        replicas, max_replicas: the HPA's range (the Deployment starts at ``replicas``).
        cpu, memory: each pod's request (and limit).
        gpu: request one ``nvidia.com/gpu`` per pod (the model's instances are GPU instances).
        target_cpu: the HPA's target CPU utilisation in percent.
        namespace: the manifests' namespace (None: the one ``kubectl`` uses).
    """

    model_uri: str
    name: str = "bgm"
    image: str = DEFAULT_IMAGE
    version: str = DEFAULT_VERSION
    replicas: int = 1
    max_replicas: int = 4
    cpu: str = "2"
    memory: str = "4Gi"
    gpu: bool = False
    target_cpu: int = 80
    namespace: str | None = None

    def __post_init__(self) -> None:
        scheme = self.model_uri.split("://", 1)[0] if "://" in self.model_uri else ""
        if scheme not in URI_SCHEMES or not self.model_uri.split("://", 1)[1].strip("/"):
            raise UsageError(f"--model-uri {self.model_uri!r} is not valid; give where the repository will live: "
                             "pvc://CLAIM/PATH, s3://BUCKET/PATH or gs://BUCKET/PATH")
        for label, value in (("--k8s-name", self.name), ("--k8s-namespace", self.namespace)):
            if value is not None and not _NAME.match(value):
                raise UsageError(f"{label} {value!r} is not a valid Kubernetes name (lowercase letters, digits and '-', "
                                 "at most 63)")
        if "/" in self.version or ":" in self.version or not self.version:
            raise UsageError(f"--triton-version {self.version!r} is not a tag; give e.g. {DEFAULT_VERSION}")
        if not 1 <= self.replicas <= self.max_replicas:
            raise UsageError(f"--replicas {self.replicas} and --max-replicas {self.max_replicas}: need "
                             "1 <= replicas <= max-replicas")
        for label, value in (("--k8s-cpu", self.cpu), ("--k8s-memory", self.memory)):
            if not _QUANTITY.match(value):
                raise UsageError(f"{label} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
        if not 1 <= self.target_cpu <= 100:
            raise UsageError(f"target_cpu={self.target_cpu} is not valid; a percentage in 1..100")

    @property
    def scheme(self) -> str:
        return self.model_uri.split("://", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metadata(options: KubernetesOptions) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": options.name, "labels": {"app": options.name}}
    if options.namespace is not None:
        meta["namespace"] = options.namespace
    return meta


def _resources(options: KubernetesOptions) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": options.cpu, "memory": options.memory}
    limits = dict(amounts)
    if options.gpu:
        limits["nvidia.com/gpu"] = 1  # extended resources: the limit is the request
    return {"requests": amounts, "limits": limits}


def _repository(options: KubernetesOptions) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """``(--model-repository value, volumes, volume mounts)``."""
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if options.scheme != "pvc":
        return options.model_uri, volumes, mounts  # Triton reads s3:// and gs:// repositories itself
    claim, _, path = options.model_uri.split("://", 1)[1].partition("/")
    volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    mount: dict[str, Any] = {"name": "models", "mountPath": MOUNT, "readOnly": True}
    if path.strip("/"):
        mount["subPath"] = path.strip("/")
    mounts.append(mount)
    return MOUNT, volumes, mounts


def _probe(path: str, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
                             "failureThreshold": failures, "timeoutSeconds": 5}
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def deployment(options: KubernetesOptions) -> dict[str, Any]:
    """The Deployment running Triton on the repository."""
    repository, volumes, mounts = _repository(options)
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": f"{options.image}:{options.version}",
        "command": ["tritonserver"],
        "args": [f"--model-repository={repository}", f"--http-port={PORTS['http']}", f"--grpc-port={PORTS['grpc']}",
                 f"--metrics-port={PORTS['metrics']}"],
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS.items()],
        # Triton's Helm chart: live as soon as the server runs; ready once the model loaded;
        # the startup probe gives loading 30 x 10 s before liveness may restart the pod.
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "startupProbe": _probe("/v2/health/ready", 10, 30),
        "resources": _resources(options),
        "volumeMounts": mounts,
    }
    if options.scheme != "pvc":
        # AWS_* / GOOGLE_APPLICATION_CREDENTIALS for the bucket, if the cluster needs them.
        container["envFrom"] = [{"secretRef": {"name": f"{options.name}-storage", "optional": True}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": {"app": options.name}},
            "template": {
                "metadata": {"labels": {"app": options.name}},
                "spec": {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": 30},
            },
        },
    }


def service(options: KubernetesOptions) -> dict[str, Any]:
    """A ClusterIP Service in front of the pods: HTTP, gRPC and metrics."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": options.name},
            "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in PORTS.items()],
        },
    }


def autoscaler(options: KubernetesOptions) -> dict[str, Any]:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler on CPU utilisation (GPU pods: scale on a
    Triton metric through a custom-metrics adapter instead; not written here)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": options.target_cpu}}}],
        },
    }


def inference_service(options: KubernetesOptions) -> dict[str, Any]:
    """The model as a KServe InferenceService (its Triton runtime, the v2 protocol)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {**_metadata(options), "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
        "spec": {
            "predictor": {
                "minReplicas": options.replicas,
                "maxReplicas": options.max_replicas,
                "model": {
                    "modelFormat": {"name": "triton"},
                    "protocolVersion": "v2",
                    "runtimeVersion": options.version,
                    "storageUri": options.model_uri,
                    "resources": _resources(options),
                },
            },
        },
    }


def manifests(options: KubernetesOptions) -> dict[str, dict[str, Any]]:
    """``{file name: manifest}`` for the four files."""
    return dict(zip(FILES, (deployment(options), service(options), autoscaler(options), inference_service(options))))


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists, strings, numbers and booleans (strings double-quoted
    as JSON, which YAML reads as-is, so no value is ever misread as another type)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2) if isinstance(item, (dict, list)) and item else f"{pad}  {to_yaml(item)}"
            lines.append(f"{pad}- {text[indent + 2:]}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if value is None:
        return "null"
    return json.dumps(str(value))


def check_manifest_dir(folder: str | Path, overwrite: bool) -> Path:
    """Refuses, before any work, a folder whose manifests exist (without ``overwrite``) or that is a file.

    Raises:
        UsageError.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--k8s {folder} is a file; give a folder for the manifests")
    existing = [folder / name for name in FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} already exists; pass --overwrite to replace the manifests or choose another --k8s")
    return folder


def write_manifests(folder: str | Path, options: KubernetesOptions, overwrite: bool = False) -> list[str]:
    """Writes the four manifests into ``folder`` (each atomically).

    Returns:
        The paths written.
    """
    folder = check_manifest_dir(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    header = (f"# bgm-deploy: Triton {options.image}:{options.version}, repository {options.model_uri}.\n"
              f"# Validated offline against the Kubernetes {KUBERNETES_VERSION} schemas; not yet applied to a real "
              "cluster (docs/scale.md).\n")
    written = []
    for name, manifest in manifests(options).items():
        atomic_write_text(folder / name, header + to_yaml(manifest) + "\n")
        written.append(str(folder / name))
    return written


__all__ = ["DEFAULT_IMAGE", "DEFAULT_VERSION", "FILES", "KUBERNETES_VERSION", "KubernetesOptions", "check_manifest_dir",
           "manifests", "to_yaml", "write_manifests"]
