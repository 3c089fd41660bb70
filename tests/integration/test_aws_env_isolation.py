"""The embedded stack (make demo, the test fixtures) ignores every S3 setting of the user's
shell. Common in practice: a MinIO user's AWS_ENDPOINT_URL_S3, which botocore prefers over
the AWS_ENDPOINT_URL the demo sets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DATA_BUCKET, REPO, aws_env_of, unique

pytestmark = pytest.mark.s3


@pytest.fixture
def hostile_shell(tmp_path, monkeypatch):
    """What a user's shell may hold: another endpoint, a profile, a region, a token, a CA
    bundle, a config file that points elsewhere, and a switch that ignores endpoint vars."""
    config = tmp_path / "aws-config"
    config.write_text("[profile elsewhere]\nregion = mars-1\nendpoint_url = http://127.0.0.1:9\n"
                      "[default]\nendpoint_url = http://127.0.0.1:9\n")
    hostile = {
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",  # the discard port: nothing answers
        "AWS_PROFILE": "elsewhere",
        "AWS_DEFAULT_PROFILE": "elsewhere",
        "AWS_REGION": "mars-1",
        "AWS_SESSION_TOKEN": "not-a-token",
        "AWS_CA_BUNDLE": str(tmp_path / "no-such-bundle.pem"),
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(config),
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    for k, v in hostile.items():
        monkeypatch.setenv(k, v)
    return hostile


def test_the_demo_environment_ignores_the_users_s3_settings(seaweed, hostile_shell):
    uri = f"s3://{DATA_BUCKET}/{unique('isolated')}"
    # What make demo and the server/puller helpers start their processes with.
    env = seaweed.client_env(os.environ)
    assert not {"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"} & set(env)
    proc = sample_data(env, uri)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # What the demo did before: the store's variables merely added on top of the shell's.
    # botocore then prefers the shell's AWS_ENDPOINT_URL_S3 and profile, and the run fails.
    naive = {**os.environ, **seaweed.env()}
    proc = sample_data(naive, f"{uri}-naive")
    assert proc.returncode == 3, proc.stderr[-2000:]


def sample_data(env: dict, uri: str) -> subprocess.CompletedProcess:
    """`trainer sample-data` with exactly `env` (run_cli would add this process's env)."""
    return subprocess.run([sys.executable, "-m", "trainer", "sample-data", "--output", uri,
                           "--per-class", "1", "--quiet"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def test_the_test_fixture_environment_ignores_the_users_s3_settings(seaweed, hostile_shell):
    from contract.storage import open_location

    with aws_env_of(seaweed):
        assert "AWS_PROFILE" not in os.environ
        location = open_location(f"s3://{DATA_BUCKET}/{unique('fixture')}")
        location.write_bytes("a/b.txt", b"x")
        assert [e.path for e in location.list_files()] == ["a/b.txt"]
    assert os.environ["AWS_PROFILE"] == "elsewhere"  # the shell's values come back after
