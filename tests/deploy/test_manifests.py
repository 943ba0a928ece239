"""The deployment files (docker-compose.yml, deploy/k8s/) against each other, the settings and the CLIs.

No Docker engine or Kubernetes cluster runs here, so these checks are parsing and schema
validation only: they keep a renamed setting, a moved port, an unknown flag, a volume shared with
the Ray nodes or a secret missing from deploy/env.example from reaching a deployment unnoticed.
The core Kubernetes kinds are validated against kubernetes-validate's bundled (offline) schemas;
the RayCluster CRD is not among them, so its structure is checked by hand and its pod templates
against the core PodTemplate schema.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from service.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
K8S_VERSION = "1.37"
CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Job"}
RAY_SERVICES = ("ray-head", "ray-gpu-worker")
# DAB_* variables that are read outside Settings, with the file that reads each
NOT_SETTINGS = {"DAB_DATA_ROOT": "dab_core/experiments/_images.py"}
# Images built from this repository, and the Dockerfile of each
OUR_IMAGES = {
    "dab-sweeps": ROOT / "deploy" / "Dockerfile",
    "dab-mlflow": ROOT / "deploy" / "mlflow.Dockerfile",
}


# -- loading ----------------------------------------------------------------------------------


def _k8s_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml"))


def _k8s_objects() -> list[dict[str, Any]]:
    docs = []
    for path in _k8s_files():
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
K8S: list[dict[str, Any]] = _k8s_objects()


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _image_name(image: str) -> str:
    """The repository's last path component without tag: registry.io/team/dab-sweeps:v1 -> dab-sweeps."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


# -- compose interpolation (the subset of docker compose's syntax the file may use) -------------

_VAR = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def _compose_vars(text: str) -> list[tuple[str, str | None]]:
    """Every variable the text interpolates, with its operator (None, ':?', ':-', ...)."""
    found = []
    for m in _VAR.finditer(text):
        if m.group(0) == "$$":
            continue
        found.append((m.group("braced") or m.group("bare"), m.group("op")))
    return found


def _interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"${{{name}}} is not set in {ENV_EXAMPLE.name}")

    return _VAR.sub(sub, text)


def _compose_env(service: str) -> dict[str, str]:
    """The service's environment as docker compose gives it, with deploy/env.example's values."""
    env = _env_example()
    return {k: _interpolate(str(v), env) for k, v in (SERVICES[service].get("environment") or {}).items()}


def _compose_command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _flag(args: list[str], name: str) -> str:
    """The value of --name (as --name=value or --name value)."""
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def _localhost_urls(text: str) -> list[tuple[int, str]]:
    return [(int(p), path) for p, path in re.findall(r"http://localhost:(\d+)(/[^'\"\s)]*)", text)]


# -- Kubernetes helpers ----------------------------------------------------------------------------


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every pod template the object declares."""
    if doc["kind"] in ("Deployment", "Job"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    elif doc["kind"] == "RayCluster":
        yield "head", doc["spec"]["headGroupSpec"]["template"]["spec"]
        for group in doc["spec"]["workerGroupSpecs"]:
            yield group["groupName"], group["template"]["spec"]


def _containers(doc: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    out = []
    for _, spec in _pod_specs(doc):
        out += spec["containers"] + (spec.get("initContainers", []) if init else [])
    return out


def _resolve_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment with ConfigMap and Secret references replaced by their values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"]
        if "configMapKeyRef" in ref:
            cm = ref["configMapKeyRef"]
            env[e["name"]] = _one("ConfigMap", cm["name"])["data"][cm["key"]]
        elif "secretKeyRef" in ref:
            s = ref["secretKeyRef"]
            env[e["name"]] = _one("Secret", s["name"])["stringData"][s["key"]]
    return env


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port resolved against the container's declared ports."""
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in ports, f"{container['name']}: no port named {port!r} in {ports}"
        return int(ports[port])
    assert port in ports.values(), f"{container['name']}: port {port} not declared in {ports}"
    return port


def _ray_cluster() -> dict[str, Any]:
    clusters = [d for d in K8S if d["kind"] == "RayCluster"]
    assert len(clusters) == 1
    return clusters[0]


def _ray_containers() -> dict[str, dict[str, Any]]:
    """label -> the Ray container (the first one) of the head and of each worker group."""
    return {label: spec["containers"][0] for label, spec in _pod_specs(_ray_cluster())}


def _service_container() -> dict[str, Any]:
    return _one("Deployment", "dab-sweeps")["spec"]["template"]["spec"]["containers"][0]


def _mlflow_container() -> dict[str, Any]:
    return _one("Deployment", "dab-mlflow")["spec"]["template"]["spec"]["containers"][0]


# -- parsing and schemas ----------------------------------------------------------------------


def test_every_file_parses_into_named_objects() -> None:
    assert set(SERVICES) == {
        "postgres",
        "minio",
        "minio-bucket",
        "mlflow",
        "ray-head",
        "ray-gpu-worker",
        "service",
    }
    for doc in K8S:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    assert {d["kind"] for d in K8S} == CORE_KINDS | {"RayCluster"}


def test_kustomization_lists_every_manifest_and_image() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in _k8s_files()} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert {i["name"] for i in kustomization["images"]} == set(OUR_IMAGES)
    used = {_image_name(c["image"]) for d in K8S for c in _containers(d)}
    assert set(OUR_IMAGES) <= used
    for doc in K8S:
        for c in _containers(doc):
            if _image_name(c["image"]) in OUR_IMAGES:
                # the name kustomize's `images:` matches on, so a registry rewrite reaches it
                assert c["image"].split(":")[0] in OUR_IMAGES, c["image"]


def _validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (dev extra) is not installed: no schemas to validate against",
    )


@pytest.mark.parametrize(
    "doc", [d for d in K8S if d["kind"] in CORE_KINDS], ids=lambda d: f"{d['kind']}-{d['metadata']['name']}"
)
def test_core_kinds_match_their_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate = _validator()
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_the_validator_rejects_what_it_should() -> None:
    kubernetes_validate = _validator()
    bad = _one("Service", "dab-sweeps") | {"spec": {"ports": [{"port": "8000"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(_ray_cluster(), K8S_VERSION, strict=True)


def test_raycluster_pod_templates_and_autoscaler_match_core_schemas() -> None:
    kubernetes_validate = _validator()
    spec = _ray_cluster()["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
    autoscaler = {k: v for k, v in spec["autoscalerOptions"].items() if k in ("env", "resources")}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "autoscaler"},
        "spec": {"containers": [{"name": "autoscaler", "image": "dab-sweeps", **autoscaler}]},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_raycluster_structure() -> None:
    cluster = _ray_cluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    constraints = (ROOT / "constraints.txt").read_text()
    assert f"ray=={spec['rayVersion']}\n" in constraints, "rayVersion must be the Ray the image installs"
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert options["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert isinstance(options["idleTimeoutSeconds"], int) and options["idleTimeoutSeconds"] > 0

    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams is a map of strings"
    assert params["num-cpus"] == "0" and params["num-gpus"] == "0", "trials must not land on the head"
    assert params["dashboard-host"] == "0.0.0.0"
    head_ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 10001} <= head_ports

    groups = spec["workerGroupSpecs"]
    assert len(groups) == 1
    (gpu,) = groups
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert gpu["minReplicas"] <= gpu.get("replicas", 0) <= gpu["maxReplicas"]
    assert all(isinstance(v, str) for v in gpu["rayStartParams"].values())
    worker = gpu["template"]["spec"]["containers"][0]
    limits = worker["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert (
        worker["resources"]["requests"].get("nvidia.com/gpu", limits["nvidia.com/gpu"])
        == limits["nvidia.com/gpu"]
    )


# -- settings -----------------------------------------------------------------------------------


def _declared_dab_names() -> dict[str, str]:
    """Every DAB_* variable any deployment file sets -> where."""
    names: dict[str, str] = {}
    for service, body in SERVICES.items():
        for key in body.get("environment") or {}:
            names.setdefault(key, f"docker-compose.yml {service}")
    for doc in K8S:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "ConfigMap":
            names.update(dict.fromkeys(doc["data"], where))
        if doc["kind"] == "Secret":
            names.update(dict.fromkeys(doc["stringData"], where))
        for c in _containers(doc):
            names.update(dict.fromkeys((e["name"] for e in c.get("env", [])), where))
        if doc["kind"] == "RayCluster":
            env = doc["spec"]["autoscalerOptions"].get("env", [])
            names.update(dict.fromkeys((e["name"] for e in env), where))
    return {k: v for k, v in names.items() if k.startswith("DAB_")}


def test_every_dab_variable_is_a_setting() -> None:
    fields = {f"DAB_{name.upper()}" for name in Settings.model_fields}
    assert Settings.model_config["env_prefix"] == "DAB_"
    declared = _declared_dab_names()
    unknown = {k: v for k, v in declared.items() if k not in fields and k not in NOT_SETTINGS}
    assert not unknown, f"not fields of service.core.config.Settings: {unknown}"
    for name, reader in NOT_SETTINGS.items():
        assert name in (ROOT / reader).read_text()
    # the new storage settings are what the deployments use; the shared sweeps volume is gone
    assert {"DAB_STORAGE_URI", "DAB_S3_ENDPOINT_URL"} <= set(declared)
    assert "DAB_SWEEPS_DIR" not in declared


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("DAB_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("DAB_"):
            monkeypatch.setenv(key, value)
    return Settings()


def _check_cluster_settings(s: Settings) -> None:
    assert s.ray_address and s.ray_address.startswith("http://")
    assert s.ray_auth_token is not None and s.api_token is not None
    assert s.database_url and s.database_url.startswith("postgresql+psycopg2://")
    assert s.mlflow_tracking_uri and s.mlflow_tracking_uri.startswith("http://")
    assert s.storage_uri and s.storage_uri.startswith("s3://")
    assert s.s3_endpoint_url and s.s3_endpoint_url.startswith(("http://", "https://"))
    assert s.storage_shared is False, "no shared filesystem: sweeps are in object storage"
    assert s.driver_python == "python"


def test_compose_service_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(_compose_env("service"), monkeypatch)
    _check_cluster_settings(s)
    assert s.ray_auth_token is not None and s.api_token is not None
    env = _env_example()
    assert s.ray_auth_token.get_secret_value() == env["RAY_AUTH_TOKEN"]
    assert s.api_token.get_secret_value() == env["DAB_API_TOKEN"]
    assert str(s.state_dir) == "/state"


def test_k8s_service_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(_resolve_env(_service_container()), monkeypatch)
    _check_cluster_settings(s)
    assert s.ray_auth_token is not None
    assert s.ray_auth_token.get_secret_value() == _one("Secret", "dab-ray-token")["stringData"]["auth_token"]


def test_k8s_references_exist_and_secret_templates_are_marked() -> None:
    for doc in K8S:
        containers = _containers(doc)
        if doc["kind"] == "RayCluster":
            containers.append({"name": "autoscaler", "env": doc["spec"]["autoscalerOptions"]["env"]})
        for c in containers:
            _resolve_env(c)  # KeyError / AssertionError on a missing ConfigMap, Secret or key
    for doc in K8S:
        if doc["kind"] == "Secret":
            for key, value in doc["stringData"].items():
                assert "CHANGE-ME" in value, f"Secret {doc['metadata']['name']} {key}: not marked CHANGE-ME"


# -- ports and URLs ---------------------------------------------------------------------------


def test_k8s_ports_agree() -> None:
    config = _one("ConfigMap", "dab-config")["data"]

    # the service: its command's port = its containerPort = its Service's targetPort
    service = _service_container()
    port = int(_flag(service["command"], "--port"))
    assert _container_port(service, "http") == port
    (svc_port,) = _one("Service", "dab-sweeps")["spec"]["ports"]
    assert _container_port(service, svc_port["targetPort"]) == port

    # MLflow: DAB_MLFLOW_TRACKING_URI names its Service and port, which lead to its --port
    mlflow = _mlflow_container()
    tracking = urlsplit(config["DAB_MLFLOW_TRACKING_URI"])
    mlflow_service = _one("Service", "dab-mlflow")
    assert tracking.hostname == mlflow_service["metadata"]["name"]
    (ml_port,) = mlflow_service["spec"]["ports"]
    assert ml_port["port"] == tracking.port
    assert _container_port(mlflow, ml_port["targetPort"]) == int(_flag(mlflow["command"], "--port"))

    # Ray: DAB_RAY_ADDRESS names KubeRay's head Service and the dashboard (jobs API) port
    cluster = _ray_cluster()
    ray = urlsplit(config["DAB_RAY_ADDRESS"])
    assert ray.scheme == "http" and ray.hostname == f"{cluster['metadata']['name']}-head-svc"
    head = _ray_containers()["head"]
    dashboard = int(cluster["spec"]["headGroupSpec"]["rayStartParams"].get("dashboard-port", "8265"))
    assert ray.port == dashboard == _container_port(head, "dashboard")

    # every probe of every container hits a port that container declares
    probes = 0
    for doc in K8S:
        for c in _containers(doc):
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                if kind in c:
                    _container_port(c, c[kind]["httpGet"]["port"])
                    probes += 1
    assert probes >= 8


def test_compose_ports_agree() -> None:
    service_env = _compose_env("service")

    port = int(_flag(_compose_command("service"), "--port"))
    assert f"{port}:{port}" in SERVICES["service"]["ports"]

    ray = urlsplit(service_env["DAB_RAY_ADDRESS"])
    head = _compose_command("ray-head")
    assert ray.hostname == "ray-head" and ray.port == int(_flag(head, "--dashboard-port"))
    assert _flag(_compose_command("ray-gpu-worker"), "--address") == f"ray-head:{_flag(head, '--port')}"

    tracking = urlsplit(service_env["DAB_MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow" and tracking.port == int(_flag(_compose_command("mlflow"), "--port"))
    for ray_service in RAY_SERVICES:
        assert _compose_env(ray_service)["DAB_MLFLOW_TRACKING_URI"] == service_env["DAB_MLFLOW_TRACKING_URI"]

    # the health checks probe the port each service listens on
    listens = {"service": port, "ray-head": ray.port, "mlflow": tracking.port}
    for name, expected in listens.items():
        urls = _localhost_urls(" ".join(SERVICES[name]["healthcheck"]["test"]))
        assert urls and all(p == expected for p, _ in urls), (name, urls)


def test_compose_ray_nodes_and_service_share_the_cluster_token() -> None:
    service = SERVICES["service"]["environment"]["DAB_RAY_AUTH_TOKEN"]
    assert _compose_vars(service)[0][0] == "RAY_AUTH_TOKEN"
    for name in RAY_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert _compose_vars(env["RAY_AUTH_TOKEN"])[0][0] == "RAY_AUTH_TOKEN"


def test_k8s_ray_token_everywhere() -> None:
    token_ref = {"name": "dab-ray-token", "key": "auth_token"}
    containers = [*_ray_containers().values(), {"env": _ray_cluster()["spec"]["autoscalerOptions"]["env"]}]
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == token_ref
    service = {e["name"]: e for e in _service_container()["env"]}
    assert service["DAB_RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == token_ref


def test_health_routes_are_the_apps_and_need_no_token(tmp_path: Path) -> None:
    from service.app import create_app

    # the app's own OpenAPI schema: the routes behind the token declare the bearer scheme
    schema = create_app(
        Settings(state_dir=tmp_path, api_token=SecretStr("t"))
    ).openapi()  # the lifespan does not run
    open_gets = {
        path for path, ops in schema["paths"].items() if "get" in ops and not ops["get"].get("security")
    }
    assert schema["paths"]["/v1/sweeps"]["get"]["security"], "the schema marks the token-protected routes"
    assert "/healthz" in open_gets
    paths = [p for _, p in _localhost_urls(" ".join(SERVICES["service"]["healthcheck"]["test"]))]
    service = _service_container()
    paths += [service[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")]
    assert paths and set(paths) <= open_gets, paths


def _installed(package: str, *parts: str) -> Path:
    """A file of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def test_ray_and_mlflow_probe_routes_exist() -> None:
    # Ray's dashboard routes, and the ones it serves without the token
    dashboard = _installed("ray", "dashboard")
    routes = "".join(p.read_text() for p in dashboard.rglob("*.py"))
    public = (dashboard / "http_server_head.py").read_text() + (
        dashboard / "http_server_agent.py"
    ).read_text()
    head, worker = _ray_containers()["head"], _ray_containers()["gpu"]
    for c in (head, worker):
        for kind in ("readinessProbe", "livenessProbe"):
            path = c[kind]["httpGet"]["path"]
            assert f'"{path}"' in routes and f'"{path}"' in public, path
    # the compose probe of the head sends the token, to the jobs API the service uses
    (_, jobs_path), *_ = _localhost_urls(" ".join(SERVICES["ray-head"]["healthcheck"]["test"]))
    assert f'@routes.get("{jobs_path}")' in routes
    assert "Authorization" in " ".join(SERVICES["ray-head"]["healthcheck"]["test"])

    # MLflow's health routes, which its Host check lets through whatever the Host header
    tree = ast.parse(_installed("mlflow", "server", "security_utils.py").read_text())
    (health,) = [
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "HEALTH_ENDPOINTS" for t in n.targets)
    ]
    paths = [p for _, p in _localhost_urls(" ".join(SERVICES["mlflow"]["healthcheck"]["test"]))]
    mlflow = _mlflow_container()
    paths += [mlflow[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")]
    assert paths and set(paths) <= set(health), paths


# -- commands -------------------------------------------------------------------------------------


def _all_commands() -> list[tuple[str, str, list[str]]]:
    """(where, image, argv) of every command a container of ours runs."""
    out = []
    for name, body in SERVICES.items():
        if "command" in body and _image_name(body["image"]) in OUR_IMAGES:
            out.append((f"compose {name}", _image_name(body["image"]), _compose_command(name)))
    for doc in K8S:
        for c in _containers(doc):
            if "command" in c and _image_name(c["image"]) in OUR_IMAGES:
                out.append((f"{doc['metadata']['name']} {c['name']}", _image_name(c["image"]), c["command"]))
    return out


def test_every_command_runs_an_installed_executable() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0] for d in project["dependencies"]}
    bin_dir = Path(sys.executable).parent
    commands = _all_commands()
    assert {exe for _, _, (exe, *_) in commands} == {"dab", "ray", "mlflow", "python"}
    dockerfile = OUR_IMAGES["dab-sweeps"].read_text()
    assert re.search(r'pip install .*"\.\[dev\]"', dockerfile), "the image installs the project"
    mlflow_dockerfile = OUR_IMAGES["dab-mlflow"].read_text()
    for where, image, (exe, *_) in commands:
        if image == "dab-mlflow":
            assert exe == "mlflow", where
            pin = re.search(r'"mlflow==([^"]+)"', mlflow_dockerfile)
            assert pin and f"mlflow=={pin.group(1)}\n" in (ROOT / "constraints.txt").read_text()
            continue
        if exe == "dab":
            assert project["scripts"]["dab"] == "service.cli:app", where
        elif exe == "ray":
            assert "ray" in deps, where
        else:
            assert exe == "python", where
        assert (bin_dir / exe).exists(), f"{where}: {exe} is not installed in {bin_dir}"


def test_dab_serve_accepts_the_flags_used() -> None:
    import typer
    from typer.testing import CliRunner

    from service.cli import app

    help_text = CliRunner().invoke(app, ["serve", "--help"])
    assert help_text.exit_code == 0, help_text.output
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    runs = [argv for _, _, argv in _all_commands() if argv[:2] == ["dab", "serve"]]
    assert len(runs) == 2  # compose and Kubernetes
    for argv in runs:
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert flag in help_text.output
        ctx = serve.make_context("serve", list(argv[2:]))  # parses and converts, does not run
        assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == 8000


def test_ray_start_accepts_the_flags_used() -> None:
    from ray.scripts.scripts import start

    runs = [argv[2:] for _, _, argv in _all_commands() if argv[:2] == ["ray", "start"]]
    assert len(runs) == 2  # the compose head and worker
    # KubeRay turns rayStartParams into `ray start --key=value` after --head or --address
    cluster = _ray_cluster()["spec"]
    runs.append(["--head", *(f"--{k}={v}" for k, v in cluster["headGroupSpec"]["rayStartParams"].items())])
    for group in cluster["workerGroupSpecs"]:
        params = group["rayStartParams"]
        runs.append(["--address=dab-ray-head-svc:6379", *(f"--{k}={v}" for k, v in params.items())])
    for args in runs:
        ctx = start.make_context("start", list(args))  # parses and converts, does not run
        assert ctx.params["head"] == ("--head" in args)
    compose_head = start.make_context("start", list(runs[0])).params
    assert compose_head["num_cpus"] == 0 and compose_head["num_gpus"] == 0


def _mlflow_server_options() -> set[str]:
    """The options of the installed `mlflow server`, read from its source (importing it takes seconds)."""
    cli = ast.parse(_installed("mlflow", "cli", "__init__.py").read_text())
    shared = ast.parse(_installed("mlflow", "utils", "cli_args.py").read_text())
    named = {
        t.id: n.value
        for n in shared.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }

    def names(call: ast.expr) -> set[str]:
        if not isinstance(call, ast.Call):
            return set()
        out = set()
        for a in call.args:
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"):
                out.update(a.value.split("/"))
        return out

    (server,) = [n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == "server"]
    options: set[str] = set()
    for deco in server.decorator_list:
        if isinstance(deco, ast.Attribute) and deco.attr in named:
            options |= names(named[deco.attr])
        else:
            options |= names(deco)
    assert {"--host", "--port", "--backend-store-uri"} <= options  # the reading found the options
    return options


def test_mlflow_server_accepts_the_flags_used_and_the_hosts_that_call_it() -> None:
    options = _mlflow_server_options()
    compose, config = _compose_env("service"), _one("ConfigMap", "dab-config")["data"]
    # each server's command, and the URLs it is called by: the service and the trials, the browser
    runs = [
        ("compose", _compose_command("mlflow"), compose),
        ("k8s", _mlflow_container()["command"], config),
    ]
    assert len([argv for _, _, argv in _all_commands() if argv[:2] == ["mlflow", "server"]]) == len(runs)
    for where, argv, settings in runs:
        flags = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
        assert flags <= options, f"{where}: unknown to mlflow server: {flags - options}"
        assert _flag(argv, "--artifacts-destination").startswith("s3://")
        assert "--serve-artifacts" in argv, "the trials reach artifacts only through the server"
        # MLflow's Host check: exact names, or fnmatch patterns when they hold a '*'
        allowed = _flag(argv, "--allowed-hosts").split(",")
        for url in (settings["DAB_MLFLOW_TRACKING_URI"], settings["DAB_MLFLOW_UI_URL"]):
            host = urlsplit(url).netloc
            assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), (where, host)


# -- compose variables, volumes, order ---------------------------------------------------------------


def test_compose_variables_are_all_in_env_example() -> None:
    used = _compose_vars(COMPOSE_FILE.read_text())
    example = _env_example()
    assert {name for name, _ in used} == set(example), "env.example: exactly the variables compose reads"
    for name, op in used:
        if re.search(r"TOKEN|PASSWORD|SECRET", name):
            assert op == ":?", f"${{{name}}} must fail loudly when unset: ${{{name}:?...}}"


def test_compose_shares_no_volume_between_the_service_and_ray() -> None:
    def sources(service: str) -> set[str]:
        return {
            str(v).split(":")[0] if isinstance(v, str) else v["source"]
            for v in SERVICES[service].get("volumes", [])
        }

    for ray_service in RAY_SERVICES:
        assert not sources(ray_service), f"{ray_service}: sweeps go through object storage, not volumes"
        assert "volumes_from" not in SERVICES[ray_service]
    assert sources("service") == {"state"}
    assert "volumes_from" not in SERVICES["service"]
    assert "sweeps" not in (COMPOSE.get("volumes") or {})


def test_k8s_ray_pods_mount_no_shared_volume() -> None:
    for label, spec in _pod_specs(_ray_cluster()):
        for volume in spec.get("volumes", []):
            assert set(volume) <= {"name", "emptyDir"}, f"{label}: {volume} (sweeps are in object storage)"
    for name in ("dab-sweeps", "dab-mlflow"):
        for volume in _one("Deployment", name)["spec"]["template"]["spec"].get("volumes", []):
            assert set(volume) <= {"name", "emptyDir"}, f"{name}: {volume}"


def test_compose_start_order_and_health_checks() -> None:
    def needs(service: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in SERVICES[service]["depends_on"].items()}

    assert needs("service") == {
        "postgres": "service_healthy",
        "minio-bucket": "service_completed_successfully",
        "mlflow": "service_healthy",
        "ray-head": "service_healthy",
    }
    assert needs("mlflow") == {
        "postgres": "service_healthy",
        "minio-bucket": "service_completed_successfully",
    }
    assert needs("minio-bucket") == {"minio": "service_healthy"}
    assert needs("ray-head") == {"minio-bucket": "service_completed_successfully"}
    assert needs("ray-gpu-worker") == {"ray-head": "service_healthy"}
    for name, body in SERVICES.items():
        for dep, condition in needs(name).items() if "depends_on" in body else []:
            if condition == "service_healthy":
                assert SERVICES[dep]["healthcheck"]["test"], (
                    f"{name} waits on {dep}, which has no health check"
                )
    worker = SERVICES["ray-gpu-worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale needs neither"
    (gpus,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]


# -- object storage ---------------------------------------------------------------------------------


def _bucket(uri: str) -> str:
    parts = urlsplit(uri)
    assert parts.scheme == "s3" and parts.netloc, uri
    return parts.netloc


def _made_buckets(script: str) -> set[str]:
    (made,) = re.findall(r"mc mb(?: --ignore-existing)?((?: \S+)+)", script)
    return {b.split("/", 1)[1] for b in made.split()}


def test_compose_object_storage_is_consistent() -> None:
    service = _compose_env("service")
    mlflow = _compose_env("mlflow")
    endpoint = service["DAB_S3_ENDPOINT_URL"]
    assert urlsplit(endpoint).hostname == "minio" and urlsplit(endpoint).port == 9000
    buckets = _made_buckets(" ".join(SERVICES["minio-bucket"]["entrypoint"]))
    artifacts = _flag(_compose_command("mlflow"), "--artifacts-destination")
    assert {_bucket(service["DAB_STORAGE_URI"]), _bucket(artifacts)} == buckets
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == endpoint
    for name in RAY_SERVICES:
        env = _compose_env(name)
        assert env["AWS_ENDPOINT_URL_S3"] == env["DAB_S3_ENDPOINT_URL"] == endpoint
    for name in ("service", "mlflow", *RAY_SERVICES):
        env = _compose_env(name)
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"], name
        assert ("MLFLOW_S3_ENDPOINT_URL" in env) == (name == "mlflow"), name
    minio = _compose_env("minio")
    assert (service["AWS_ACCESS_KEY_ID"], service["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )


def test_k8s_object_storage_is_consistent() -> None:
    config = _one("ConfigMap", "dab-config")["data"]
    endpoint = config["DAB_S3_ENDPOINT_URL"]
    (job,) = _containers(_one("Job", "dab-buckets"))
    buckets = _made_buckets(" ".join(job["command"]))
    artifacts = _flag(_mlflow_container()["command"], "--artifacts-destination")
    assert {_bucket(config["DAB_STORAGE_URI"]), _bucket(artifacts)} == buckets
    assert _resolve_env(job)["S3_ENDPOINT"] == endpoint
    mlflow = _resolve_env(_mlflow_container())
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == endpoint
    for label, c in _ray_containers().items():
        env = _resolve_env(c)
        assert env["AWS_ENDPOINT_URL_S3"] == env["DAB_S3_ENDPOINT_URL"] == endpoint, label
    for env in [_resolve_env(_service_container()), mlflow, *map(_resolve_env, _ray_containers().values())]:
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert "MLFLOW_S3_ENDPOINT_URL" not in _resolve_env(_service_container())


def test_databases_exist_for_every_url() -> None:
    created = set(re.findall(r"CREATE DATABASE (\w+);", (ROOT / "deploy" / "initdb.sql").read_text()))
    assert created == {"dab", "mlflow"}
    urls = [_compose_env("service")["DAB_DATABASE_URL"], _compose_env("mlflow")["MLFLOW_BACKEND_STORE_URI"]]
    secrets = _one("Secret", "dab-secrets")["stringData"]
    urls += [secrets["DAB_DATABASE_URL"], secrets["MLFLOW_BACKEND_STORE_URI"]]
    assert {urlsplit(u).path.lstrip("/") for u in urls} == created
    assert urls[0].startswith("postgresql+psycopg2://") and urls[2].startswith("postgresql+psycopg2://")


def test_docs_name_only_files_that_exist() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|configs|docs)/[\w./-]*\w)", text))
    assert {"deploy/k8s", "configs/quickstart.yaml"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists() and p != "deploy/.env")
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"
    # the commands in the files' headers, word for word
    headers = [COMPOSE_FILE, K8S_DIR / "kustomization.yaml"]
    commands = [
        line.lstrip("# ").split("  #")[0].rstrip()
        for path in headers
        for line in path.read_text().splitlines()
        if re.match(r"#\s+(docker|kubectl) ", line)
    ]
    assert len(commands) >= 4
    for command in commands:
        assert command in text, f"docs/deploy.md lacks: {command}"
