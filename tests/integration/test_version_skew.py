"""Models are exported by the trainer's TensorFlow (pinned to 2.20, the version inside
tensorflow/serving:2.20.0) and served by TF Serving. This loads a published version under
TF Serving's TensorFlow, installed on its own (tensorflow-cpu, as the serving image has it),
the way TF Serving loads it (a session), and runs all three signatures and every warmup
record through it; the answers must match the trainer's. It is the guard for the next
upgrade of either side: pin the trainer to a newer TensorFlow only with this passing.

TF 2.20 is installed into its own virtual environment from requirements/
tf-serving-runtime.lock (hashes required), once, beside the project's venv
(tests/compat/runtime.py).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.compat.runtime import serving_runtime_python
from tests.conftest import REPO

SERVING_TF_VERSION = "2.20.0"
RUNNER = REPO / "tests" / "compat" / "run_signatures.py"

pytestmark = [pytest.mark.slow, pytest.mark.vgg16]


@pytest.fixture(scope="session")
def serving_runtime() -> Path:
    """Python of a venv holding TF 2.20 (tests/compat/runtime.py; `make test` builds it)."""
    return serving_runtime_python()


def tensor(value, dtype: str) -> dict:
    array = np.asarray(value, dtype=object if dtype == "string" else dtype)
    if dtype == "string":
        return {"dtype": "string", "shape": list(array.shape),
                "b64": [base64.b64encode(v).decode() for v in array.reshape(-1)]}
    return {"dtype": dtype, "shape": list(array.shape),
            "b64": [base64.b64encode(array.tobytes()).decode()]}


def warmup_calls(version_dir: Path) -> list[dict]:
    """Every record of the version's warmup file, as the calls TF Serving replays."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    calls = []
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") == "predict_log":
            request = log.predict_log.request
            calls.append({"signature": request.model_spec.signature_name, "inputs": {
                alias: tensor(tf.make_ndarray(proto), "string")
                for alias, proto in request.inputs.items()}})
        else:
            request = log.classify_log.request
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            calls.append({"signature": request.model_spec.signature_name,
                          "inputs": {"inputs": tensor(examples, "string")}})
    return calls


def signature_calls(model) -> list[dict]:
    import tensorflow as tf
    from PIL import Image

    images = [model.image(fmt)[1] for fmt in ("JPEG", "PNG", "GIF", "BMP")]
    with Image.open(io.BytesIO(images[0])) as im:
        pixels = np.asarray(im.convert("RGB").resize((224, 224)), dtype=np.float32)[None]
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[1]]))}))
    return [
        {"signature": "serving_default", "inputs": {"image_bytes": tensor(images, "string")}},
        {"signature": "predict_images", "inputs": {"images": tensor(pixels, "float32")}},
        {"signature": "classify",
         "inputs": {"inputs": tensor([example.SerializeToString()], "string")}},
    ]


def run_under(python: Path, model_dir: Path, calls: list[dict], tmp_path: Path) -> dict:
    calls_file = tmp_path / "calls.json"
    calls_file.write_text(json.dumps(calls))
    proc = subprocess.run([str(python), str(RUNNER), str(model_dir), str(calls_file)],
                          capture_output=True, text=True, timeout=600,
                          env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_models_load_and_answer_the_same_under_the_serving_images_tensorflow(
        vgg16_model, serving_runtime, tmp_path):
    """On a real VGG16 export (0.5 GB of variables restored by name, as TF Serving does)."""
    model = vgg16_model
    calls = signature_calls(model) + warmup_calls(model.version_dir)
    assert len(calls) >= 5  # 3 signatures, and the warmup records (predict and classify)
    served = run_under(serving_runtime, model.version_dir, calls, tmp_path)
    trained = run_under(Path(sys.executable), model.version_dir, calls, tmp_path)
    assert served["tensorflow"] == SERVING_TF_VERSION
    assert trained["tensorflow"] == SERVING_TF_VERSION  # the trainer is pinned to it too
    assert {"serving_default", "predict_images", "classify"} <= set(served["signatures"])
    for call, old, new in zip(calls, served["results"], trained["results"], strict=True):
        assert old.keys() == new.keys(), call["signature"]
        for alias in new:
            (old_values, old_shape), (new_values, new_shape) = old[alias], new[alias]
            assert old_shape == new_shape, (call["signature"], alias)
            if old_values and isinstance(old_values[0], str):
                assert old_values == new_values, (call["signature"], alias)
            else:
                np.testing.assert_allclose(old_values, new_values, atol=1e-5,
                                           err_msg=f"{call['signature']}/{alias}")
    # And they are the trainer's own predictions for those images.
    default = served["results"][0]
    labels, _ = default["label"]
    paths = [model.image(fmt)[0] for fmt in ("JPEG", "PNG", "GIF", "BMP")]
    expected = [model.classes[int(np.argmax(model.expected[p]))] for p in paths]
    assert labels == expected
