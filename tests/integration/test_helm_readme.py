"""Every command the chart README shows, run as written.

Each ```sh block of helm/imconnector-consumer/README.md runs in bash, in order, in a
scratch directory where `helm` and `kubectl` are small stand-ins on PATH (no cluster
here): `helm install|upgrade` calls the real helm as `helm template` with the same
arguments and keeps the manifests; `kubectl create secret generic` keeps the Secret it
would create. Any other command fails the test, so the README only shows what is tested.

The manifests are then checked as a cluster would take them: kubernetes-validate (strict,
the chart's oldest and the newest Kubernetes), every Secret and key the pod and KEDA read
exists, the alert rules pass promtool, and the service loads the settings a pod would get
(environment and mounted files, materialized under a scratch root).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.chart import (
    CHART,
    CRD_KINDS,
    K8S_VERSIONS,
    REPO,
    WORKLOAD_KINDS,
    container,
    materialize_pod,
    one,
    rendered_secrets,
    workload,
)

README = CHART / "README.md"
FAKE_PEM = "-----BEGIN CERTIFICATE-----\nMIIBreadmeTestCertificate\n-----END CERTIFICATE-----\n"

# The stand-ins. They record into $README_OUT; anything they do not know exits 3.
HELM_SHIM = """\
import os, subprocess, sys
args = sys.argv[1:]
if not args or args[0] not in ("install", "upgrade"):
    sys.exit(f"helm {' '.join(args)}: the README test renders only helm install/upgrade")
rest = [a for a in args[1:] if a != "--install"]
out = os.environ["README_OUT"]
n = len([f for f in os.listdir(out) if f.startswith("render-")])
done = subprocess.run([os.environ["REAL_HELM"], "template", *rest], capture_output=True, text=True)
sys.stderr.write(done.stderr)
with open(os.path.join(out, f"render-{n:02d}.yaml"), "w") as f:
    f.write(done.stdout)
with open(os.path.join(out, f"render-{n:02d}.cmd"), "w") as f:
    f.write(" ".join(args))
sys.exit(done.returncode)
"""
KUBECTL_SHIM = """\
import base64, json, os, sys
args, namespace = sys.argv[1:], "default"
for flag in ("--namespace", "-n"):
    if flag in args:
        i = args.index(flag)
        namespace = args[i + 1]
        del args[i : i + 2]
if args[:3] != ["create", "secret", "generic"] or len(args) < 4:
    sys.exit(f"kubectl {' '.join(sys.argv[1:])}: the README test knows only "
             "kubectl create secret generic")
name, data = args[3], {}
for arg in args[4:]:
    if arg.startswith("--from-literal="):
        key, _, value = arg.removeprefix("--from-literal=").partition("=")
        data[key] = value
    elif arg.startswith("--from-file="):
        spec = arg.removeprefix("--from-file=")
        key, _, path = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
        with open(path) as f:  # kubectl fails the same way when the file is missing
            data[key] = f.read()
    else:
        sys.exit(f"kubectl: unknown argument {arg}")
secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
          "metadata": {"name": name, "namespace": namespace},
          "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
with open(os.path.join(os.environ["README_OUT"], f"secret-{name}.json"), "w") as f:
    json.dump(secret, f)
"""


def sh_blocks() -> list[str]:
    """The ```sh blocks of the README, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def run_readme(helm: str, root: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Run every block; return the renders (command, manifests) and the Secrets created."""
    work, out, bin_dir = root / "work", root / "out", root / "bin"
    for directory in (work, out, bin_dir):
        directory.mkdir()
    (work / "helm").symlink_to(REPO / "helm")  # the README's chart path, helm/...
    for name, code in (("helm", HELM_SHIM), ("kubectl", KUBECTL_SHIM)):
        shim = bin_dir / name
        shim.write_text(f"#!{sys.executable}\n{code}")
        shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "README_OUT": str(out),
        "REAL_HELM": helm,
    }
    blocks = sh_blocks()
    for block in blocks:
        # Files the operator brings (CA bundles named in --from-file=key=./file).
        for path in re.findall(r"--from-file=[^=\s]+=(\S+)", block):
            (work / path).write_text(FAKE_PEM)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"README block failed:\n{block}\n{result.stderr}"
    renders = [
        {
            "command": path.with_suffix(".cmd").read_text(),
            "docs": [d for d in yaml.safe_load_all(path.read_text()) if d],
        }
        for path in sorted(out.glob("render-*.yaml"))
    ]
    secrets = {}
    for path in sorted(out.glob("secret-*.json")):
        secret = json.loads(path.read_text())
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(secret, version, strict=True)
        secrets[secret["metadata"]["name"]] = {
            k: base64.b64decode(v).decode() for k, v in secret["data"].items()
        }
    return renders, secrets


@pytest.fixture(scope="module")
def readme(
    helm: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    return run_readme(helm, tmp_path_factory.mktemp("readme"))


def load_in_service(env: dict[str, str]) -> dict[str, Any]:
    """The settings the service loads from a pod's environment (its own code, a subprocess)."""
    probe = (
        "import json\n"
        "from consumer.settings import load_settings\n"
        "from consumer.kafka.clients import consumer_config\n"
        "s = load_settings()\n"
        "c = consumer_config(s)\n"
        "print(json.dumps({'rdkafka': {k: str(v) for k, v in c.items()},\n"
        "  'instance_id': s.instance_id, 'group': s.group_id, 'topics': s.source_topics,\n"
        "  'registry': s.schema_registry_url,\n"
        "  'portals': {k: [p.rest_url, p.client_secret.get_secret_value(),\n"
        "     p.refresh_token.get_secret_value() if p.refresh_token else None]\n"
        "     for k, p in s.portals.items()}}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMCONNECTOR_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_readme_shows_only_commands_this_test_runs() -> None:
    blocks = sh_blocks()
    assert len(blocks) >= 5
    installs = [b for b in blocks if "helm install" in b]
    assert len(installs) == 3
    assert not any("--set kafka.bootstrapServers=" in b and "," in b for b in installs), (
        "--set splits at commas: show the brokers as a list or with --set-literal"
    )


def test_every_readme_command_renders_valid_manifests(
    readme: tuple[list[dict[str, Any]], dict[str, dict[str, str]]],
) -> None:
    renders, _ = readme
    assert len(renders) == 3
    for render in renders:
        docs = render["docs"]
        assert docs, render["command"]
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                continue
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_production_installs_run_both_kinds_with_keda_against_secured_services(
    readme: tuple[list[dict[str, Any]], dict[str, dict[str, str]]],
) -> None:
    renders, _ = readme
    production = [r for r in renders if "chat-mirror.yaml" in r["command"]]
    assert {workload(r["docs"])["kind"] for r in production} == WORKLOAD_KINDS
    for render in production:
        docs = render["docs"]
        config = one(docs, "ConfigMap", "chat-mirror-imconnector-consumer")["data"]
        assert config["IMCONNECTOR_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert config["IMCONNECTOR_SCHEMA_REGISTRY_URL"].startswith("https://")
        scaled = one(docs, "ScaledObject")
        target = scaled["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == (
            workload(docs)["kind"],
            workload(docs)["metadata"]["name"],
        )
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"
        assert (
            trigger["authenticationRef"]["name"]
            == one(docs, "TriggerAuthentication")["metadata"]["name"]
        )


def test_every_secret_the_manifests_read_is_created(
    readme: tuple[list[dict[str, Any]], dict[str, dict[str, str]]],
) -> None:
    renders, created = readme
    for render in renders:
        docs = render["docs"]
        secrets = {**created, **rendered_secrets(docs)}
        for auth in (d for d in docs if d["kind"] == "TriggerAuthentication"):
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets.get(ref["name"], {}), (render["command"], ref)
        for source in container(workload(docs)).get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, render["command"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_service_loads_what_each_install_gives_a_pod(
    readme: tuple[list[dict[str, Any]], dict[str, dict[str, str]]], tmp_path: Path, index: int
) -> None:
    renders, created = readme
    docs = renders[index]["docs"]
    w = workload(docs)
    pod = f"{w['metadata']['name']}-0" if w["kind"] == "StatefulSet" else "pod-7c9d-x2b4q"
    env = materialize_pod(docs, {**created, **rendered_secrets(docs)}, pod, tmp_path)
    loaded = load_in_service(env)
    rdkafka = loaded["rdkafka"]
    if "chat-mirror.yaml" not in renders[index]["command"]:
        assert rdkafka["bootstrap.servers"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
        return
    assert rdkafka["bootstrap.servers"] == ",".join(
        f"kafka-{i}.kafka-headless.kafka.svc:9093" for i in range(3)
    )
    assert rdkafka["security.protocol"] == "SASL_SSL"
    assert rdkafka["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (rdkafka["sasl.username"], rdkafka["sasl.password"]) == ("chat-mirror", "kafka-password")
    assert Path(rdkafka["ssl.ca.location"]).read_text() == FAKE_PEM
    assert loaded["group"] == "chat-mirror"
    assert loaded["registry"] == "https://schema-registry.kafka.svc:8081"
    assert loaded["portals"] == {
        "b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8": [
            "https://example.bitrix24.com/rest/",
            "oauth-client-secret",
            "oauth-refresh-token",
        ]
    }
    # The registry's credentials and CA arrive as files where the settings point.
    secrets_dir = Path(env["IMCONNECTOR_SECRETS_DIR"])
    assert (secrets_dir / "IMCONNECTOR_SCHEMA_REGISTRY_USERNAME").read_text() == "chat-mirror"
    assert (secrets_dir / "IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD").read_text() == "registry-password"
    assert Path(env["IMCONNECTOR_SCHEMA_REGISTRY_CA_LOCATION"]).read_text() == FAKE_PEM
    if w["kind"] == "StatefulSet":
        assert loaded["instance_id"] == pod
        assert rdkafka["group.instance.id"] == f"chat-mirror-{pod}"
    else:
        assert "group.instance.id" not in rdkafka


def test_readme_alert_rules_pass_promtool(
    readme: tuple[list[dict[str, Any]], dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: run ops/tools/install-prometheus.sh"
    renders, _ = readme
    for index, render in enumerate(renders):
        for rule in (d for d in render["docs"] if d["kind"] == "PrometheusRule"):
            path = tmp_path / f"rules-{index}.yaml"
            path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
            result = subprocess.run(
                [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, result.stdout + result.stderr
            labels = {r["labels"].get("team") for g in rule["spec"]["groups"] for r in g["rules"]}
            assert labels == {"messaging"}
