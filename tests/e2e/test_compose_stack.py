"""The docker compose stack for real: build, start, train, serve, classify, tear down.

Needs a Docker engine with the compose plugin; skips with the reason when none answers
(development and CI machines here have only the Docker client).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from serving.client import GrpcClient, RestClient

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine():
    docker = pytest.importorskip("docker", reason="the docker SDK is a dev dependency")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.skip(f"no Docker engine answers ({type(e).__name__}: {str(e)[:120]})")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the Docker engine answers but `docker compose` is not installed")
    return client


@pytest.fixture
def stack(engine, tmp_path):
    project = f"vgg16e2e{secrets.token_hex(3)}"
    env = tmp_path / ".env"
    env.write_text(f"AWS_ACCESS_KEY_ID=e2e-{secrets.token_hex(4)}\n"
                   f"AWS_SECRET_ACCESS_KEY={secrets.token_hex(16)}\n")
    base = ["docker", "compose", "-p", project, "--env-file", str(env), "-f",
            str(REPO / "docker-compose.yml")]

    def compose(*args, timeout=1800):
        proc = subprocess.run([*base, *args], capture_output=True, text=True, cwd=REPO,
                              timeout=timeout)
        assert proc.returncode == 0, f"compose {' '.join(args)}:\n{proc.stderr[-4000:]}"
        return proc

    yield project, compose, dict(line.split("=", 1) for line in env.read_text().split())
    subprocess.run([*base, "down", "--volumes", "--remove-orphans"], capture_output=True,
                   cwd=REPO, timeout=300)


def wait_healthy(engine, project: str, service: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        containers = engine.containers.list(filters={
            "label": [f"com.docker.compose.project={project}",
                      f"com.docker.compose.service={service}"]})
        if containers and containers[0].attrs["State"].get("Health", {}).get("Status") == \
                "healthy":
            return
        time.sleep(3)
    raise TimeoutError(f"{service} not healthy after {timeout}s")


def test_stack_trains_publishes_pulls_serves_and_classifies(engine, stack, tmp_path):
    project, compose, credentials = stack
    compose("build")
    compose("up", "-d", "s3", "init", "puller", "tfserving")
    compose("run", "--rm", "trainer", "train", "--epochs", "3")
    wait_healthy(engine, project, "puller")
    wait_healthy(engine, project, "tfserving")

    import boto3

    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:8333", region_name="us-east-1",
                      aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="datasets",
                                                 Prefix="shapes/")["Contents"]][:4]
    images = [s3.get_object(Bucket="datasets", Key=k)["Body"].read() for k in keys]
    with GrpcClient("127.0.0.1:8500") as client:
        by_grpc = client.classify(images, "classifier")
        assert [v.state for v in client.status("classifier")][0] == "AVAILABLE"
    with RestClient("http://127.0.0.1:8501") as client:
        by_rest = client.classify(images, "classifier")
    assert [p.label for p in by_grpc] == [p.label for p in by_rest]
    assert {p.label for p in by_grpc} <= {"circle", "square"}
