"""deploy/ is checked by the real checkers: `haproxy -c` for the proxy, the Kubernetes schemas
(kubernetes-validate, offline) for the manifests, the Compose specification's JSON schema for
the compose file; plus what they cannot know (the drain fits in the grace period, every
process shares the session secret and the adapters). tests/shared/test_cluster.py runs the HAProxy
file itself in front of three app processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness.cluster_support import DEPLOY, haproxy_binary

K8S_VERSION = "1.30.0"
PROXY_ENV = {"TRAVEL_PROXY_BIND": "127.0.0.1:8080", "TRAVEL_APP1": "127.0.0.1:8001",
             "TRAVEL_APP2": "127.0.0.1:8002", "TRAVEL_APP3": "127.0.0.1:8003"}


def test_haproxy_config_is_valid() -> None:
    proc = subprocess.run([haproxy_binary(), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
                          env={**os.environ, **PROXY_ENV}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A missing variable would leave a server without an address: haproxy refuses it.
    broken = subprocess.run([haproxy_binary(), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
                            env={**os.environ, **PROXY_ENV, "TRAVEL_APP2": ""},
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    docs = _manifests()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
    assert kinds == ["ConfigMap/travel-chat-config", "Deployment/redis",
                     "Deployment/travel-chat", "Ingress/travel-chat",
                     "PersistentVolumeClaim/travel-adapters",
                     "PodDisruptionBudget/travel-chat", "Secret/travel-chat-secrets",
                     "Service/postgres", "Service/redis", "Service/travel-chat",
                     "StatefulSet/postgres"]
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {err}")
    # The checker itself rejects a misspelt field (strict): it is not a no-op.
    bad = json.loads(json.dumps(dict(docs)["chat.yaml"]))
    bad["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kubernetes_chat_replicas_share_what_they_must_and_drain_in_time() -> None:
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for _, d in _manifests()}
    chat = docs["Deployment/travel-chat"]
    spec = chat["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert chat["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    drain = float(docs["ConfigMap/travel-chat-config"]["data"]["TRAVEL_DRAIN_TIMEOUT_S"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > drain + pre_stop
    secret = docs["Secret/travel-chat-secrets"]["stringData"]
    assert {"TRAVEL_AUTH_SECRET", "TRAVEL_DATABASE_URL"} <= set(secret)
    assert {r.get("secretRef", {}).get("name") for r in container["envFrom"]} >= {
        "travel-chat-secrets"}
    [volume] = spec["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "travel-adapters"
    assert docs["PersistentVolumeClaim/travel-adapters"]["spec"]["accessModes"] == [
        "ReadWriteMany"]
    annotations = docs["Ingress/travel-chat"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    config = docs["ConfigMap/travel-chat-config"]["data"]
    assert config["TRAVEL_REDIS_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in secret["TRAVEL_DATABASE_URL"]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in validator.iter_errors(_compose())]
    assert not errors, errors
    broken = _compose()
    broken["services"]["app1"]["stop_grace"] = "35s"
    assert list(validator.iter_errors(broken))


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_compose_processes_share_secret_database_redis_and_adapters() -> None:
    services = _compose()["services"]
    apps = [services[f"app{i}"] for i in (1, 2, 3)]
    for app in apps:
        env = app["environment"]
        assert env == apps[0]["environment"]
        assert "TRAVEL_AUTH_SECRET" in env and env["TRAVEL_REDIS_URL"].startswith("redis://")
        assert "adapters:/data/deployments" in app["volumes"]
        assert _seconds(app["stop_grace_period"]) > float(env["TRAVEL_DRAIN_TIMEOUT_S"])
    proxy_env = services["proxy"]["environment"]
    needed = set(re.findall(r"\$\{(\w+)\}", (DEPLOY / "haproxy.cfg").read_text()))
    assert needed == set(proxy_env) == set(PROXY_ENV)
    assert "adapters:/data/deployments" in services["admin"]["volumes"]
