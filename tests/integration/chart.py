"""Rendering the Helm chart in tests: helm template over the ci/ value sets, and helpers to
pick resources out of the result and to see a pod's environment as the kubelet builds it.

The `helm` fixture (tests/integration/conftest.py) finds the binary; nothing here talks to
a cluster.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "imconnector-consumer"
CI_VALUES = CHART / "ci"
RELEASE = "rel"
NAMESPACE = "chat"
FULLNAME = f"{RELEASE}-imconnector-consumer"
HELM_INSTALLER = "ops/tools/install-helm.sh"

VALUE_SETS = {
    "defaults": "default-values.yaml",
    "all-toggles": "all-toggles-values.yaml",
    "existing-secret": "existing-secret-values.yaml",
    "keda": "keda-values.yaml",
    "statefulset": "statefulset-values.yaml",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def template(
    helm: str, *values_files: str, sets: tuple[str, ...] = (), extra: tuple[str, ...] = ()
) -> str:
    """`helm template` output; raises AssertionError with helm's message on failure."""
    result = try_template(helm, *values_files, sets=sets, extra=extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def try_template(
    helm: str, *values_files: str, sets: tuple[str, ...] = (), extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with ci/ value files, `--set` items and further flags."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for name in values_files:
        args += ["-f", str(CI_VALUES / name)]
    for item in sets:
        args += ["--set", item]
    return run_helm(helm, *args, *extra)


def documents(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


_cache: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}


def render(helm: str, value_set: str, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rendered manifests of one named value set (cached: helm is not free)."""
    key = (value_set, sets)
    if key not in _cache:
        _cache[key] = documents(template(helm, VALUE_SETS[value_set], sets=sets))
    return _cache[key]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def values_of(value_set: str) -> dict[str, Any]:
    """The chart's values.yaml merged with a ci/ values file (enough for these tests)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load((CI_VALUES / VALUE_SETS[value_set]).read_text()))


def servers_string(values: dict[str, Any]) -> str:
    """kafka.bootstrapServers of a value set as one comma-separated string."""
    servers = values["kafka"]["bootstrapServers"]
    return ",".join(servers) if isinstance(servers, list) else str(servers)


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one Deployment or StatefulSet (workload.kind) of a render."""
    found = [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, [doc["kind"] for doc in found]
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = one(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def helm_binary() -> str:
    """Path of the helm binary; fails (never skips) with the fix when it is missing."""
    local = REPO / "ops" / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    pytest.fail(
        f"helm not found in ops/.tools/bin or on PATH: run {HELM_INSTALLER} "
        "(scripts/bootstrap does it)",
        pytrace=False,
    )


def pod_env(docs: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the rendered manifests:
    `envFrom` ConfigMaps and Secrets, then `env` (literal values, the pod name from the
    downward API, keys of rendered Secrets). Fails on a reference it cannot resolve."""
    c = container(workload(docs))
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret_data(docs, source["secretRef"]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", var
            env[var["name"]] = pod_name
        else:
            key = ref["secretKeyRef"]
            env[var["name"]] = secret_data(docs, key["name"])[key["key"]]
    return env


def rendered_secrets(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Name -> decoded data of every Secret in a render."""
    return {
        s["metadata"]["name"]: secret_data(docs, s["metadata"]["name"])
        for s in docs
        if s["kind"] == "Secret"
    }


def materialize_pod(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]], pod_name: str, root: Path
) -> dict[str, str]:
    """What the kubelet gives the container, with its mounted files written under `root`.

    `secrets` are all Secrets of the namespace (rendered or made by hand), name -> data; a
    reference to a missing Secret or key fails, as the pod would not start. Returns the
    environment, with values that point into a mount rewritten to the files under `root`.
    """
    w = workload(docs)
    c = container(w)
    volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}

    def data(name: str) -> dict[str, str]:
        assert name in secrets, f"the pod reads Secret {name}, which nobody creates"
        return secrets[name]

    def write(directory: Path, name: str, items: list[dict[str, str]] | None) -> None:
        content = data(name)
        for item in items or [{"key": k, "path": k} for k in content]:
            assert item["key"] in content, f"Secret {name} has no key {item['key']}"
            (directory / item["path"]).write_text(content[item["key"]])

    mounts: dict[str, Path] = {}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            write(target, volume["secret"]["secretName"], volume["secret"].get("items"))
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                write(target, source["secret"]["name"], source["secret"].get("items"))
        mounts[mount["mountPath"]] = target
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(data(source["secretRef"]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = pod_name
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = data(ref["name"])[ref["key"]]
    for name, value in env.items():
        for path, target in mounts.items():
            if value == path or value.startswith(path + "/"):
                env[name] = str(target) + value[len(path) :]
    return env
