"""The client CLI (`serving classify|status|metadata`) against `serving local`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from serving.cli import cli
from tests.integration.conftest import http


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
    result = invoke("status", *endpoints(server)[transport], "--model-name", "tiny",
                    "--wait", "10")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows == [["2", "AVAILABLE", "OK"], ["1", "AVAILABLE", "OK"]]
    result = invoke("metadata", *endpoints(server)[transport], "--model-name", "tiny",
                    "--label", "stable", "--wait", "10")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == "  classify  tensorflow/serving/predict"
    assert "__saved_model_init_op" not in result.stdout  # the loader's, not for requests
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



@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_bad_images_are_reported_per_file_and_exit_2(server, tiny_model, image_files,
                                                     tmp_path, transport):
    """The good files are classified and printed; each bad one gets its reason (the junk
    file is refused by the client itself, the truncated one by the model); exit 2."""
    good = next(iter(image_files))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    cut = tmp_path / "cut.jpg"
    jpeg = next(data for _, data in tiny_model.files if data.startswith(b"\xff\xd8"))
    cut.write_bytes(jpeg[:60])
    where = endpoints(server)[transport]
    result = invoke("classify", *where, "--model-name", "tiny", str(junk), good, str(cut))
    assert result.exit_code == 2, result.output
    rows = result.stdout.splitlines()[1:]
    assert rows[0].split()[1:] == ["-", "-", "error:", "not", "a", "JPEG/PNG/GIF/BMP", "image"]
    expected = tiny_model.classes[int(np.argmax(tiny_model.expected[image_files[good]]))]
    assert rows[1].split()[1] == expected
    assert rows[2].endswith("error: truncated or corrupt image")
    [line] = result.stderr.splitlines()
    assert line.startswith("error: 2 of 3 images could not be classified")
    result = invoke("classify", *where, "--model-name", "tiny", "--json", str(cut), good)
    assert result.exit_code == 2
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["error"] for x in lines] == ["truncated or corrupt image", ""]
    assert lines[0]["top_k"] == [] and lines[1]["label"] == expected


@pytest.mark.parametrize("where", [["--grpc", "127.0.0.1:1"], ["--rest", "http://127.0.0.1:1"]])
def test_an_unreachable_server_is_exit_3(where, image_files):
    result = invoke("status", *where, "--model-name", "tiny", "--timeout", "3")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: model server at 127.0.0.1:1") or \
        result.stderr.startswith("error: model server at http://127.0.0.1:1")
    assert result.stderr.count("\n") == 1


def test_rest_pointed_at_the_grpc_port_says_so(server):
    result = invoke("status", "--rest", f"http://{server.grpc_target}", "--model-name", "tiny")
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert line == (f"error: model server at http://{server.grpc_target} unreachable (the "
                    "port answers, but not in HTTP/1.1: a gRPC port?): is it running, and is "
                    "this its REST port (8501 by default; 8500 is gRPC)?")


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
