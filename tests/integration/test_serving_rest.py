"""`serving local` over REST: TF Serving's URLs, JSON formats, status codes and messages."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.integration.conftest import http, http_json


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def url(server, path: str) -> str:
    return f"{server.rest_url}{path}"


def test_status_lists_versions_newest_first_as_strings(server):
    status, body = http_json("GET", url(server, "/v1/models/tiny"))
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                          "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                          "error_message": ""}}]}
    status, body = http_json("GET", url(server, "/v1/models/tiny/versions/1"))
    assert [v["version"] for v in body["model_version_status"]] == ["1"]
    # A label is not resolved for status: every version comes back, as in TF Serving.
    status, body = http_json("GET", url(server, "/v1/models/tiny/labels/stable"))
    assert status == 200 and len(body["model_version_status"]) == 2


def test_metadata_has_the_doubly_nested_signature_def(server):
    status, body = http_json("GET", url(server, "/v1/models/tiny/versions/1/metadata"))
    assert status == 200
    assert body["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "predict_images", "classify"} <= set(sigs)
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert set(default["outputs"]) == {"label", "score", "classes", "scores", "error"}
    _, latest = http_json("GET", url(server, "/v1/models/tiny/metadata"))
    assert latest["model_spec"]["version"] == "2"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_predict_row_format_matches_the_trainer(server, tiny_model, fmt):
    path, data = tiny_model.image(fmt)
    status, body = http_json("POST", url(server, "/v1/models/tiny:predict"),
                             {"instances": [b64(data)]})
    assert status == 200, body
    [prediction] = body["predictions"]
    expected = tiny_model.expected[path]
    np.testing.assert_allclose(prediction["scores"], expected, atol=1e-5)
    assert prediction["classes"] == tiny_model.classes
    assert prediction["label"] == tiny_model.classes[int(np.argmax(expected))]
    assert prediction["score"] == pytest.approx(float(np.max(expected)), abs=1e-5)


def test_predict_columnar_named_inputs_and_a_batch(server, tiny_model):
    files = tiny_model.files[:3]
    status, body = http_json("POST", url(server, "/v1/models/tiny/versions/1:predict"), {
        "signature_name": "serving_default",
        "inputs": {"image_bytes": [b64(d) for _, d in files]}})
    assert status == 200, body
    outputs = body["outputs"]
    np.testing.assert_allclose(outputs["scores"], [tiny_model.expected[p] for p, _ in files],
                               atol=1e-5)
    assert len(outputs["label"]) == 3


def test_predict_by_label_and_named_row_objects(server, tiny_model):
    path, data = tiny_model.files[0]
    status, body = http_json("POST", url(server, "/v1/models/tiny/labels/canary:predict"),
                             {"instances": [{"image_bytes": b64(data)}]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["scores"], tiny_model.expected[path],
                               atol=1e-5)


def test_predict_images_signature_takes_float_pixels(server, tiny_model):
    import tensorflow as tf

    from trainer.preprocessing import decode_and_resize

    path, data = tiny_model.files[1]
    pixels = decode_and_resize(tf.constant(data)).numpy()
    status, body = http_json("POST", url(server, "/v1/models/tiny:predict"),
                             {"signature_name": "predict_images",
                              "instances": [pixels.tolist()]})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"][0]["scores"], tiny_model.expected[path],
                               atol=1e-4)


def test_classify_with_examples_and_context(server, tiny_model):
    files = tiny_model.files[:2]
    status, body = http_json("POST", url(server, "/v1/models/tiny:classify"), {
        "signature_name": "classify",
        "context": {"source": "test"},
        "examples": [{"image/encoded": b64(d)} for _, d in files]})
    assert status == 200, body
    assert len(body["results"]) == 2
    for (path, _), result in zip(files, body["results"], strict=True):
        assert [label for label, _ in result] == tiny_model.classes
        np.testing.assert_allclose([score for _, score in result], tiny_model.expected[path],
                                   atol=1e-5)


NOT_AN_IMAGE = b64(b"this is not an image")


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/models/nope:predict", {"instances": [NOT_AN_IMAGE]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/tiny/versions/9:predict", {"instances": [NOT_AN_IMAGE]}, 404,
     "Servable not found for request: Specific(tiny, 9)"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/tiny/versions/9", None, 404, "Could not find version 9 of model tiny"),
    ("POST", "/v1/models/tiny/labels/nope:predict", {"instances": [NOT_AN_IMAGE]}, 400,
     "Unrecognized servable version label: nope"),
    ("POST", "/v1/models/tiny:predict", "", 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/tiny:predict", "{not json", 400,
     "JSON Parse error: Missing a name for object member. at offset: 1"),
    ("POST", "/v1/models/nope:predict", "{not json", 400, "JSON Parse error:"),  # body first
    ("POST", "/v1/models/tiny:predict", {"signature_name": 1, "instances": [1]}, 400,
     "'signature_name' key must be a string value."),
    ("POST", "/v1/models/tiny:predict", {"signature_name": "nope", "instances": [1]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/tiny:predict", {"x": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/tiny:predict", {"instances": []}, 400,
     "No values in 'instances' array"),
    ("POST", "/v1/models/tiny:predict", {"instances": [{"image": NOT_AN_IMAGE}]}, 400,
     "Failed to process element: 0 key: image of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON object: does not have named input: image"),
    ("POST", "/v1/models/tiny:predict", {"instances": [1.5]}, 400,
     "JSON Value: 1.5 Type: Number is not of expected type: string"),
    ("POST", "/v1/models/tiny:predict", {"instances": [{"b64": "%%%"}]}, 400,
     "Unable to base64 decode"),
    ("POST", "/v1/models/tiny:predict", {"signature_name": "predict_images",
                                         "instances": ["x"]}, 400,
     "is not of expected type: float"),
    ("POST", "/v1/models/tiny:classify", {"examples": [{"image/encoded": NOT_AN_IMAGE}]}, 400,
     "Expected one or two output Tensors, found 5"),  # serving_default: classifier.cc
    ("POST", "/v1/models/tiny:classify", {"signature_name": "classify"}, 400,
     "When method is classify, key 'examples' is expected and was not found"),
    ("POST", "/v1/models/tiny:regress", {"examples": [{}]}, 400,
     "Expected one output Tensor."),  # no regression signature (regressor.cc)
    # The path grammar is case-insensitive, the verb dispatch is not (http_rest_api_util.cc,
    # http_rest_api_handler.cc): a 400, as from TF Serving.
    ("POST", "/v1/models/tiny:PREDICT", {"instances": [1]}, 400,
     "Malformed request: POST /v1/models/tiny:PREDICT"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/tiny:predict", None, 400, "Malformed request: GET /v1/models/tiny:predict"),
    ("POST", "/v1/models/tiny/metadata", "{}", 400, "Malformed request: POST"),
    ("GET", "/v1/models/tiny/version/1", None, 400, "Malformed request"),
    # Issue 27: a version of 5,000 digits and JSON nested 990 deep were 500s.
    ("GET", "/v1/models/tiny/versions/" + "9" * 5000, None, 400,
     "Failed to convert version: 9999"),
    ("POST", "/v1/models/tiny:predict", '{"instances": ' + "[" * 990 + "1" + "]" * 990 + "}",
     400, "Malformed request: the JSON values nest deeper than a tensor can"),
    ("PUT", "/v1/models/tiny", "{}", 400, "Malformed request: PUT /v1/models/tiny"),
])
def test_error_catalogue(server, method, path, body, status, message):
    payload = json.dumps(body) if isinstance(body, dict) else body
    got, headers, text = http(method, url(server, path), payload)
    assert got == status, text
    assert headers["Content-Type"].startswith("application/json")
    assert set(json.loads(text)) == {"error"}
    assert message in json.loads(text)["error"]


def test_paths_outside_v1_are_plain_404(server):
    status, headers, text = http("GET", url(server, "/healthz"))
    assert status == 404 and "Not Found" in text and headers["Content-Type"].startswith(
        "text/html")


def test_request_body_over_the_limit_is_413_with_an_error_body(server):
    status, _, text = http("POST", url(server, "/v1/models/tiny:predict"), b"x" * 9_000_000)
    assert status == 413
    assert "larger than the server's limit of 8000000 bytes" in json.loads(text)["error"]


def test_cors_preflight(server):
    status, headers, _ = http("OPTIONS", url(server, "/v1/models/tiny:predict"),
                              headers={"Origin": "http://localhost:3000"})
    assert status == 200 and headers["Access-Control-Allow-Methods"] == "POST, GET"
    status, _, text = http("OPTIONS", url(server, "/v1/models/tiny:predict"))
    assert status == 400 and "Origin header is missing" in text


def test_bytes_after_the_json_body_are_ignored(server, tiny_model):
    """util/json_tensor.cc parses with kParseStopWhenDoneFlag."""
    _, data = tiny_model.files[0]
    body = json.dumps({"instances": [b64(data)]}) + "\n# and then anything"
    status, _, text = http("POST", url(server, "/v1/models/tiny:predict"), body)
    assert status == 200, text


def metric_value(page: str, line_prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(line_prefix))


def test_request_counts_and_latencies_follow_tf_serving(server):
    """model_servers/http_server.cc: every REST request reaching the handler is counted
    (status GETs too); latency is recorded only for a 200."""
    page = lambda: http("GET", url(server, "/monitoring/prometheus/metrics"))[2]  # noqa: E731
    ok_count = ':tensorflow:serving:request_count{model_name="tiny",status="OK"}'
    bad_count = ':tensorflow:serving:request_count{model_name="tiny",status="INVALID_ARGUMENT"}'
    get_latency = ':tensorflow:serving:request_latency_count{model_name="tiny",API="",' \
                  'entrypoint="REST"}'
    predict_latency = ':tensorflow:serving:request_latency_count{model_name="tiny",' \
                      'API="predict",entrypoint="REST"}'
    before = page()
    assert http("GET", url(server, "/v1/models/tiny"))[0] == 200
    assert http_json("POST", url(server, "/v1/models/tiny:predict"), {"instances": [1]})[0] \
        == 400
    after = page()
    assert metric_value(after, ok_count) == metric_value(before, ok_count) + 1
    assert metric_value(after, bad_count) == metric_value(before, bad_count) + 1
    assert metric_value(after, get_latency) == metric_value(before, get_latency) + 1
    assert metric_value(after, predict_latency) == metric_value(before, predict_latency)
    # Buckets as TF Serving declares them: batch sizes 1..8192, latencies from 10 µs by 1.8.
    assert 'le="1.27482e+06"' in after and 'le="+Inf"' in after


def test_prometheus_metrics_use_tf_serving_names(server, tiny_model):
    path, data = tiny_model.files[0]
    http_json("POST", url(server, "/v1/models/tiny:predict"), {"instances": [b64(data)]})
    http_json("POST", url(server, "/v1/models/tiny:predict"), {"instances": [1.5]})
    status, headers, page = http("GET", url(server, "/monitoring/prometheus/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="tiny",status="OK"}' in page
    assert ':tensorflow:serving:request_count{model_name="tiny",status="INVALID_ARGUMENT"}' \
        in page
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page
    assert ':tensorflow:serving:request_latency_count{model_name="tiny",API="predict",' \
        'entrypoint="REST"}' in page
    assert "_total" not in page


def test_bad_images_are_answered_per_item_with_a_reason(server, tiny_model):
    """A bad image is not a request error (DESIGN section 4): 200, with `error` set for it
    and the good images of the same request answered as usual."""
    import io

    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")  # valid PNG: 144 MP in ~20 KB
    path, good = tiny_model.files[0]
    status, body = http_json("POST", url(server, "/v1/models/tiny:predict"), {"instances": [
        NOT_AN_IMAGE, b64(good), b64(bomb.getvalue()), b64(good[: len(good) // 2])]})
    assert status == 200, body
    errors = [p["error"] for p in body["predictions"]]
    assert errors == ["not a JPEG/PNG/GIF/BMP image", "", "image too large (144 megapixels)",
                      "truncated or corrupt image"]
    bad = body["predictions"][0]
    assert bad["label"] == "" and bad["score"] == 0 and bad["scores"] == [0.0, 0.0]
    np.testing.assert_allclose(body["predictions"][1]["scores"], tiny_model.expected[path],
                               atol=1e-5)
