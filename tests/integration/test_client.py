"""The client CLI (`serving classify|status|metadata`) against `serving local`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from serving.cli import cli
from tests.integration.conftest import http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_files(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for path, data in tiny_model.files:
        local = folder / path.replace("/", "__")
        local.write_bytes(data)
        paths[str(local)] = path
    return paths


def endpoints(server):
    return {"grpc": ["--grpc", server.grpc_target], "rest": ["--rest", server.rest_url]}


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def grpc_predict_count(server) -> float:
    _, _, page = http("GET", f"{server.rest_url}/monitoring/prometheus/metrics")
    prefix = ':tensorflow:serving:request_latency_count{model_name="tiny",API="Predict",' \
             'entrypoint="GRPC"}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(prefix))


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_classify_json_lines_match_the_trainer(server, tiny_model, image_files, transport):
    files = list(image_files)
    before = grpc_predict_count(server)
    result = invoke("classify", *endpoints(server)[transport], "--model-name", "tiny",
                    "--json", "--top-k", "2", "--batch-size", "5", *files)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    for line in lines:
        expected = tiny_model.expected[image_files[line["file"]]]
        assert line["label"] == tiny_model.classes[int(np.argmax(expected))]
        assert line["score"] == pytest.approx(float(np.max(expected)), abs=1e-5)
        assert [label for label, _ in line["top_k"]] == \
            [tiny_model.classes[i] for i in np.argsort(-expected)]
    if transport == "grpc":  # 12 files in batches of 5: three requests
        assert grpc_predict_count(server) - before == 3


def test_classify_table_version_and_label(server, tiny_model, image_files):
    path = next(iter(image_files))
    for extra in (["--version", "1"], ["--label", "canary"], []):
        result = invoke("classify", "--grpc", server.grpc_target, "--model-name", "tiny",
                        *extra, path)
        assert result.exit_code == 0, result.output
        header, row = result.stdout.splitlines()
        assert header.split()[:3] == ["file", "label", "score"]
        expected = tiny_model.expected[image_files[path]]
        assert row.split()[1] == tiny_model.classes[int(np.argmax(expected))]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_status_and_metadata(server, transport):
    result = invoke("status", *endpoints(server)[transport], "--model-name", "tiny")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows == [["2", "AVAILABLE", "OK"], ["1", "AVAILABLE", "OK"]]
    result = invoke("metadata", *endpoints(server)[transport], "--model-name", "tiny",
                    "--label", "stable")
    assert result.exit_code == 0, result.output
    assert "model tiny version 1" in result.stdout
    assert "input  image_bytes: DT_STRING [-1]" in result.stdout
    assert "input  images: DT_FLOAT [-1,224,224,3]" in result.stdout
    assert "output scores: DT_FLOAT [-1,2]" in result.stdout


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_errors_are_one_line_with_an_exit_code(server, image_files, tmp_path, transport):
    path = next(iter(image_files))
    where = endpoints(server)[transport]
    result = invoke("classify", *where, "--model-name", "nope", path)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Servable not found for request: Latest(nope)" \
        in result.stderr
    result = invoke("classify", *where, "--model-name", "tiny", str(tmp_path / "missing.jpg"))
    assert result.exit_code == 2 and "cannot read image file" in result.stderr
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    result = invoke("classify", *where, "--model-name", "tiny", str(junk))
    assert result.exit_code == 2 and "Unknown image file format" in result.stderr


@pytest.mark.parametrize("where", [["--grpc", "127.0.0.1:1"], ["--rest", "http://127.0.0.1:1"]])
def test_an_unreachable_server_is_exit_3(where, image_files):
    result = invoke("status", *where, "--model-name", "tiny", "--timeout", "3")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: model server at 127.0.0.1:1") or \
        result.stderr.startswith("error: model server at http://127.0.0.1:1")
    assert result.stderr.count("\n") == 1


def test_usage_errors(image_files):
    path = next(iter(image_files))
    result = invoke("classify", "--grpc", "a:1", "--rest", "http://b", "--model-name", "m",
                    path)
    assert result.exit_code == 2 and "exactly one of --grpc HOST:PORT or --rest URL" in \
        result.output
    result = invoke("classify", "--grpc", "a:1", "--model-name", "m", "--version", "1",
                    "--label", "x", path)
    assert result.exit_code == 2 and "--version and --label exclude each other" in \
        result.output
