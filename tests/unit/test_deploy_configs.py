"""deploy/: the compose file, the Kubernetes manifests and the Dockerfile hold together as far as this
machine can check without Docker or a cluster: YAML parses, every RLHF_* variable is a real setting,
references resolve (services, volumes, images, config), Prometheus targets are compose services on the
ports the services serve, and ``kubectl kustomize`` builds the manifests where kubectl is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rlhf_loop.settings import Settings
from rlhf_loop.settings_doc import rows

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS = {env for env, _, _ in rows()}
OTHER_ENV = {"PROMETHEUS_MULTIPROC_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict]:
    """The manifests kustomization.yaml lists (kustomize's own build is checked separately)."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in yaml.safe_load_all((DEPLOY / "k8s" / f).read_text()) if d]


def test_compose_has_the_whole_stack(compose: dict) -> None:
    services = compose["services"]
    assert {"kafka", "postgres", "redis", "api", "aggregator", "gpu-worker", "beat", "prometheus", "grafana"} <= set(
        services
    )
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    (device,) = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_references_resolve(compose: dict) -> None:
    services, volumes = compose["services"], set(compose["volumes"])
    for name, svc in services.items():
        assert set(svc.get("depends_on", [])) <= set(services), name
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        build = svc.get("build")
        if build:
            dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).read_text()
            assert re.search(rf"^FROM .+ AS {build['target']}$", dockerfile, re.M), f"{name}: no stage {build}"


def test_compose_environment_names_real_settings(compose: dict) -> None:
    for name, svc in compose["services"].items():
        env = set(svc.get("environment", {}) or {})
        if name in ("api", "aggregator", "gpu-worker", "beat", "migrate"):
            assert {"RLHF_ENV", "RLHF_TOKEN__SECRET", "RLHF_DATABASE__URL"} <= env, name
            assert env - SETTINGS - OTHER_ENV == set(), f"{name}: unknown variables"


def test_prometheus_targets_are_compose_services_on_their_ports(compose: dict) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = compose["services"]
    defaults = Settings(_env_file=None)
    ports = {
        "api": defaults.api.port,
        "vllm": int(services["vllm"]["command"][services["vllm"]["command"].index("--port") + 1]),
        "aggregator": int(services["aggregator"]["environment"]["RLHF_MONITORING__AGGREGATOR_METRICS_PORT"]),
        "gpu-worker": defaults.training.metrics_port,
        "beat": defaults.training.metrics_port,
        "localhost": 9090,
    }
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in ports and int(port) == ports[host], f"{job['job_name']}: {target}"


def test_compose_vllm_runs_on_the_gpu_and_reads_adapters_read_only(compose: dict) -> None:
    services = compose["services"]
    vllm, api = services["vllm"], services["api"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "data:/data:ro" in vllm["volumes"]  # the adapter volume the training workers write
    assert "--enable-lora" in vllm["command"] and vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    port = vllm["command"][vllm["command"].index("--port") + 1]
    assert api["environment"]["RLHF_SERVING__VLLM_URLS"] == f"http://vllm:{port}"
    assert "RLHF_SERVING__ENGINE" in api["environment"]


def vllm_overlay() -> tuple[dict, list[dict]]:
    root = DEPLOY / "k8s-vllm"
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    docs = [
        d for f in kustomization["resources"] if f.endswith(".yaml") for d in yaml.safe_load_all((root / f).read_text())
    ]
    return kustomization, [d for d in docs if d]


def test_k8s_vllm_replicas_are_on_the_gpu_pool_each_named_in_the_api_config() -> None:
    kustomization, docs = vllm_overlay()
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    pool = next(d for d in k8s_docs() if d["kind"] == "NodePool")["spec"]["template"]["metadata"]["labels"]
    spec = sts["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["nodeSelector"].items() <= pool.items() and container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    (data,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"] == {"claimName": "rlhf-data", "readOnly": True}
    assert "livenessProbe" in container and "--enable-lora" in container["args"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    literals = dict(lit.split("=", 1) for lit in kustomization["configMapGenerator"][0]["literals"])
    assert set(literals) - SETTINGS == set() and literals["RLHF_SERVING__ENGINE"] == "vllm"
    port = container["args"][container["args"].index("--port") + 1]
    name = sts["metadata"]["name"]
    expected = [f"http://{name}-{i}.{svc['metadata']['name']}:{port}" for i in range(sts["spec"]["replicas"])]
    assert literals["RLHF_SERVING__VLLM_URLS"].split(",") == expected  # one URL per replica, every replica


def test_kustomize_builds_the_vllm_overlay_with_light_api_pods(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with its built-in kustomize) is needed to build deploy/k8s-vllm"
    shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    shutil.copytree(DEPLOY / "k8s-vllm", tmp_path / "k8s-vllm")
    shutil.copy(tmp_path / "k8s" / "secrets.env.example", tmp_path / "k8s" / "secrets.env")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path / "k8s-vllm")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert all(d["metadata"].get("namespace", "rlhf-loop") == "rlhf-loop" for d in built)
    (config,) = [d for d in built if d["kind"] == "ConfigMap"]
    assert config["data"]["RLHF_SERVING__ENGINE"] == "vllm" and config["data"]["RLHF_ENV"] == "prod"
    workloads = {d["metadata"]["name"]: d for d in built if d["kind"] in ("Deployment", "StatefulSet")}
    api = workloads["rlhf-api"]["spec"]["template"]["spec"]["containers"][0]
    base_api = next(d for d in k8s_docs() if d["metadata"]["name"] == "rlhf-api" and d["kind"] == "StatefulSet")
    base_memory = base_api["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    assert (
        api["resources"]["requests"]["memory"] != base_memory and "nvidia.com/gpu" not in api["resources"]["requests"]
    )
    assert any(d["kind"] == "StatefulSet" and d["metadata"]["name"] == "rlhf-vllm" for d in built)


def test_grafana_gets_the_provisioning_and_the_dashboards(compose: dict) -> None:
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "rlhf-loop.yml").read_text())
    mounts = dict(m.rsplit(":", 2)[:2] for m in compose["services"]["grafana"]["volumes"])
    assert mounts["../dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dockerfile_builds_a_cpu_app_image_and_a_cuda_training_image() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    app, training = text.split(" AS app\n")[1].split(" AS training\n")
    assert "download.pytorch.org/whl/cpu" in app and "cu" in re.search(r"TORCH_INDEX=(\S+)", training).group(1)


def test_k8s_manifests_have_probes_resources_secrets_and_a_gpu_pool() -> None:
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("HorizontalPodAutoscaler", "rlhf-api") in kinds and ("NodePool", "rlhf-gpu") in kinds
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rlhf-api"
    pool = next(d for d in docs if d["kind"] == "NodePool")["spec"]["template"]["metadata"]["labels"]
    for d in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            assert c["resources"]["requests"] and "livenessProbe" in c, d["metadata"]["name"]
            assert {"secretRef": {"name": "rlhf-secrets"}} in c["envFrom"], d["metadata"]["name"]
            if c["resources"]["requests"].get("nvidia.com/gpu"):
                assert spec["nodeSelector"].items() <= pool.items(), "gpu workers must land on the GPU pool"
    assert any(d["metadata"]["name"] == "rlhf-gpu-worker" for d in docs if d["kind"] == "Deployment")


def test_k8s_config_and_secret_keys_are_real_settings() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    literals = {lit.split("=", 1)[0] for lit in kustomization["configMapGenerator"][0]["literals"]}
    secret = (DEPLOY / "k8s" / "secrets.env.example").read_text().split()
    keys = literals | {line.split("=", 1)[0] for line in secret}
    assert keys - SETTINGS == set()
    assert {"RLHF_TOKEN__SECRET", "RLHF_DATABASE__URL"} <= {line.split("=", 1)[0] for line in secret}


def test_kustomize_builds_the_manifests(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with its built-in kustomize) is needed to build deploy/k8s"
    shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    shutil.copy(tmp_path / "k8s" / "secrets.env.example", tmp_path / "k8s" / "secrets.env")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path / "k8s")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(k8s_docs()) + 2  # + the generated ConfigMap and Secret
    assert all(d["metadata"].get("namespace", "rlhf-loop") == "rlhf-loop" for d in built)


def _workloads() -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")]


def test_k8s_api_keeps_a_persistent_spool_per_pod_and_drains_on_shutdown() -> None:
    docs = k8s_docs()
    (api,) = [d for d in docs if d["metadata"]["name"] == "rlhf-api" and d["kind"] in ("Deployment", "StatefulSet")]
    assert api["kind"] == "StatefulSet"
    spec = api["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    spool_path = next(e["value"] for e in container["env"] if e["name"] == "RLHF_SPOOL__PATH")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"]: t["spec"] for t in api["spec"]["volumeClaimTemplates"]}
    assert spool_path.startswith(mounts["spool"] + "/") and "ReadWriteOnce" in claims["spool"]["accessModes"]
    assert all(v["name"] != "spool" and "emptyDir" not in v for v in spec.get("volumes", []))  # not the pod's
    assert api["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    defaults = Settings(_env_file=None)
    # the pause, a request's longest wait for its events (then spooled), the producer's flush on close
    drain_s = int(pre_stop[1]) + 2 * defaults.kafka.send_timeout_s + 10
    assert spec["terminationGracePeriodSeconds"] >= drain_s
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    assert services[api["spec"]["serviceName"]]["clusterIP"] == "None"  # the governing headless Service


def test_migrations_run_before_the_workloads() -> None:
    job = next(d for d in k8s_docs() if d["kind"] == "Job" and d["metadata"]["name"] == "rlhf-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    for d in _workloads():
        inits = d["spec"]["template"]["spec"].get("initContainers", [])
        assert any(c["args"][:2] == ["migrate", "--wait-s"] for c in inits), d["metadata"]["name"]
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("api", "aggregator", "gpu-worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_deployed_topics_are_replicated() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    env = dict(lit.split("=", 1) for lit in kustomization["configMapGenerator"][0]["literals"])
    kafka = {k.removeprefix("RLHF_KAFKA__").lower(): v for k, v in env.items() if k.startswith("RLHF_KAFKA__")}
    settings = Settings(  # validates: the other prod checks are met the way the secrets file would meet them
        _env_file=None,
        env=env["RLHF_ENV"],
        token={"secret": "q8Vd2LrT0xYb7NwKf3HsJm9ZcPe1UaGi5RnWo4Ek6Bt"},
        kafka=kafka,
        database={"url": "postgresql+psycopg://rlhf@postgres/rlhf"},
        redis={"url": "redis://redis:6379/0"},
    )
    assert settings.kafka.replication_factor >= 3 and settings.kafka.min_insync_replicas >= 2
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    shared = compose["x-rlhf-env"]
    assert shared["RLHF_KAFKA__CREATE_TOPICS"] == "false"  # one broker: the topics service creates them
    assert "--create" in compose["services"]["topics"]["command"][0]
