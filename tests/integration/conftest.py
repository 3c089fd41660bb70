"""Servers for the integration tests: real `serving local` processes on free ports."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format

from serving.devserver import config as serving_config
from tests.conftest import REPO, link_version
from tools.model_server import LocalServer

CONFIG_DIR = REPO / "serving" / "config"


def http(method: str, url: str, body: bytes | str | None = None,
         headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, str]:
    """(status, headers, text) without raising on 4xx/5xx."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def http_json(method: str, url: str, body=None) -> tuple[int, dict]:
    status, _, text = http(method, url, json.dumps(body) if body is not None else None)
    return status, json.loads(text)


def project_models_config(path: Path, name: str, base_path: Path, versions: list[int],
                          labels: dict[str, int]) -> Path:
    """The project's own serving/config/models.config, pointed at a test model."""
    models = serving_config.load_models(CONFIG_DIR / "models.config")
    config = serving_config.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.CopyFrom(models[0])
    model.name = name
    model.base_path = str(base_path)
    model.model_version_policy.specific.versions.extend(versions)
    for label, version in labels.items():
        model.version_labels[label] = version
    path.write_text(text_format.MessageToString(config))
    return path


@pytest.fixture(scope="session")
def two_versions(tiny_model, tmp_path_factory) -> Path:
    """A base path with versions 1 and 2 of the tiny model (2 is a copy of 1)."""
    base = tmp_path_factory.mktemp("served") / tiny_model.name
    base.mkdir()
    link_version(tiny_model.version_dir, base, 1)
    link_version(tiny_model.version_dir, base, 2)
    return base


@pytest.fixture(scope="session")
def server(tiny_model, two_versions, tmp_path_factory):
    """Serves versions 1 and 2 with labels stable=1, canary=2, Prometheus metrics on, and a
    8 MB request limit. Uses the project's models.config and monitoring.config."""
    tmp = tmp_path_factory.mktemp("server")
    config = project_models_config(tmp / "models.config", tiny_model.name, two_versions,
                                   [1, 2], {"stable": 1, "canary": 2})
    # Labels on versions that load only after startup: TF Serving needs this flag for it
    # (server_core.cc, UpdateModelVersionLabelMap), and so does `serving local`.
    srv = LocalServer(["--model-config-file", str(config),
                       "--allow_version_labels_for_unavailable_models=true",
                       "--monitoring-config-file", str(CONFIG_DIR / "monitoring.config"),
                       "--max-request-bytes", "8000000"], tmp / "server.log")
    srv.start(wait_for_model=tiny_model.name)
    yield srv
    assert srv.stop() == 0, srv.log_text()[-3000:]


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch
