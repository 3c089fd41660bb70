"""Security: no credentials leak anywhere, loopback by default, requests never touch files."""

from __future__ import annotations

import socket
import subprocess
import urllib.parse

import pytest
import requests

from contract.manifest import MANIFEST_FILE
from contract.storage import open_location
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_no_credentials_in_the_tree_logs_reports_or_manifests(seaweed, published_s3, server,
                                                              tmp_path):
    secrets = [seaweed.access_key, seaweed.secret_key]
    texts = {"trainer stdout": published_s3["proc"].stdout,
             "trainer stderr": published_s3["proc"].stderr,
             "server log": server.log_text(), "store log": seaweed.log_text()}
    version = open_location(published_s3["version_uri"])
    for entry in version.list_files():
        if entry.path.endswith((".json", ".txt")):
            texts[entry.path] = version.read_bytes(entry.path).decode("utf-8", "replace")
    pull = run_cli("serving", "pull", "--source", published_s3["version_uri"].rsplit("/", 1)[0],
                   "--dest", str(tmp_path / "demo"))
    texts["puller output"] = pull.stdout + pull.stderr
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        path = REPO / name
        if path.is_file():
            texts[name] = path.read_text(errors="replace")
    assert len(texts) > 50
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"credential found in {where}"
    config = texts["assets.extra/report/config.json"]
    assert "secret" not in config.lower() and "AWS_" not in config
    # Nor where the trainer keeps its signing key (issue 27), though the version is signed.
    assert "signing_key" not in config and "model.sig" in texts[MANIFEST_FILE]
    assert "predictions" not in texts["assets.extra/report/metrics.json"]


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_development_server_binds_loopback_by_default(server):
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    for port in (server.rest_port, server.grpc_port):
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(3)
            s.connect((address, port))
    assert requests.get(f"{server.rest_url}/v1/models/tiny", timeout=10).status_code == 200


def test_a_remote_client_gets_tf_servings_not_found_without_the_served_models(
        tiny_model, tmp_path):
    """Issue 27: a NOT_FOUND listed every served model to anyone. serving local keeps that
    hint for a client on the same machine; a remote one gets exactly TF Serving's answer."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from serving.defaults import SERVED_MODELS_KEY
    from tools.model_server import LocalServer

    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to reach the server by")
    srv = LocalServer(["--model-name", "tiny", "--model-base-path", str(tiny_model.base_path),
                       "--host", "0.0.0.0"], tmp_path / "server.log").start(
        wait_for_model="tiny")
    try:
        answers = {}
        for where, host in (("remote", address), ("local", "127.0.0.1")):
            rest = requests.get(f"http://{host}:{srv.rest_port}/v1/models/nope", timeout=30)
            assert rest.status_code == 404
            assert rest.json() == {"error": "Could not find any versions of model nope"}
            with grpc.insecure_channel(f"{host}:{srv.grpc_port}") as channel:
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = "nope"
                with pytest.raises(grpc.RpcError) as caught:
                    model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                        request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            trailers = dict(caught.value.trailing_metadata() or ())
            answers[where] = (rest.headers.get(SERVED_MODELS_KEY),
                              trailers.get(SERVED_MODELS_KEY))
        assert answers == {"remote": (None, None), "local": ("tiny", "tiny")}
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", ".",
                                  "tiny/../tiny", "%2e%2e", "tiny%00", "~root"])
def test_model_names_from_requests_never_reach_the_filesystem(server, name):
    quoted = urllib.parse.quote(name, safe="")
    for method, path in (("GET", f"/v1/models/{quoted}"),
                         ("GET", f"/v1/models/{quoted}/metadata"),
                         ("POST", f"/v1/models/{quoted}:predict")):
        response = requests.request(method, f"{server.rest_url}{path}", data="{}", timeout=30)
        assert response.status_code in (400, 404), (name, path, response.text)
        assert "root:" not in response.text


def _memory_mb(pid: int, field: str) -> float:
    from pathlib import Path

    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [x for x in status.splitlines() if x.startswith(f"{field}:")]
    return int(line.split()[1]) / 1024


def test_hostile_gifs_get_their_reason_per_item_and_never_grow_the_server(server, tiny_model):
    """GIFs whose header says 1x1 but whose frames hold 108 MP, and one of 25,000 one-byte
    blocks, in one request beside a good image: each bad one is answered with its reason,
    the good one is classified, and the server's peak memory stays where it was (decoding
    them would take 324 MB for the pixels alone)."""
    import base64

    from tests.unit.test_preprocessing import MANY_BLOCKS, hostile_gif

    _, good = tiny_model.image("JPEG")
    url = f"{server.rest_url}/v1/models/tiny:predict"

    def predict(images: list[bytes]) -> requests.Response:
        return requests.post(url, timeout=120, json={"instances": [
            {"b64": base64.b64encode(b).decode()} for b in images]})

    assert predict([good]).status_code == 200  # warm
    pid = server.process.pid
    try:  # reset the peak (VmHWM) to the current size, so only this request can raise it
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("cannot reset the server's peak memory (/proc/PID/clear_refs)")
    before = _memory_mb(pid, "VmRSS")
    response = predict([hostile_gif(6000, 3), hostile_gif(3000, 12), MANY_BLOCKS, good])
    assert response.status_code == 200, response.text
    errors = [p["error"] for p in response.json()["predictions"]]
    assert errors == ["image too large (108 megapixels)", "image too large (108 megapixels)",
                      "truncated or corrupt image", ""]
    assert _memory_mb(pid, "VmHWM") - before < 100
