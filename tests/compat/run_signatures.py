"""Load a SavedModel the way TF Serving does and run signature calls; print JSON results.

Run by tests/integration/test_version_skew.py under two TensorFlow versions: the trainer's
and the one inside tensorflow/serving. TF Serving loads a SavedModel into a session
(LoadSavedModel: import the MetaGraph, run the restore and init ops) and serves a signature
with Session::Run, feeding and fetching the tensor names its SignatureDef lists
(servables/tensorflow/saved_model_bundle_factory.cc, predict_util.cc). The v1 loader below
does the same from Python. Only TensorFlow is needed here, not tensorflow-serving-api.

    python run_signatures.py MODEL_DIR CALLS.json  >  RESULTS.json
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import tensorflow as tf


def decode(value: dict) -> np.ndarray:
    raw = [base64.b64decode(b) for b in value["b64"]]
    if value["dtype"] == "string":
        return np.array(raw, dtype=object).reshape(value["shape"])
    return np.frombuffer(raw[0], dtype=value["dtype"]).reshape(value["shape"])


def encode(array: np.ndarray):
    if array.dtype == object:
        return [v.decode("utf-8", "replace") for v in array.reshape(-1)], list(array.shape)
    return array.astype(float).reshape(-1).tolist(), list(array.shape)


def main(model_dir: str, calls_file: str) -> None:
    tf.compat.v1.disable_eager_execution()  # a graph and a session, as TF Serving runs
    with open(calls_file) as f:
        calls = json.load(f)
    results = []
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], model_dir)
        signatures = meta.signature_def
        for call in calls:
            signature = signatures[call["signature"]]
            feed = {signature.inputs[alias].name: decode(value)
                    for alias, value in call["inputs"].items()}
            fetch = {alias: info.name for alias, info in signature.outputs.items()}
            outputs = session.run(fetch, feed)
            results.append({alias: encode(np.asarray(v)) for alias, v in outputs.items()})
    json.dump({"tensorflow": tf.__version__, "signatures": sorted(signatures),
               "results": results}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:3])
