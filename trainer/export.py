"""Export: the whole classifier as a TensorFlow SavedModel that TF Serving loads as is.

Signatures (DESIGN section 4; names are part of the contract):

| signature         | input                                   | outputs                          |
|-------------------|-----------------------------------------|----------------------------------|
| serving_default   | image_bytes  DT_STRING [-1] (encoded)   | label, score, classes, scores,   |
|                   |                                         | error ("" or why the image is bad)|
| predict_images    | images DT_FLOAT [-1,224,224,3] RGB 0-255| label, score, classes, scores    |
| classify          | inputs DT_STRING [-1] (tf.Example with  | classes, scores (Classify API)   |
|                   | bytes feature image/encoded)            |                                  |

Decoding, resizing and VGG preprocessing run inside the graph with the same function the
trainer used (trainer.preprocessing), so training and serving cannot disagree. A bad image
is reported per item and never fails the call (preprocessing.preprocess_batch): `error`
says why, its `label` is "", its `score` 0 and its `scores` all zero, which no good image
can have (a softmax sums to 1); the Classify API, which allows only `classes` and `scores`,
shows a bad item by those all-zero scores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import keras
import tensorflow as tf

from contract.names import (
    CLASSIFY,
    CLASSIFY_INPUT,
    ERROR_OUTPUT,
    EXAMPLE_IMAGE_FEATURE,
    IMAGE_BYTES_INPUT,
    IMAGES_INPUT,
    LABELS_FILE,
    PREDICT_IMAGES,
    SERVING_DEFAULT,
    WARMUP_FILE,
)
from trainer.preprocessing import IMAGE_SIZE, preprocess_batch, vgg_preprocess

WARMUP_RECORDS = 3
WARMUP_BAD_IMAGE = b"warmup: not an image"  # exercises the per-item error path


class Classifier(tf.Module):
    """What the SavedModel holds: the network's variables, the class names, the signatures.

    The Keras model itself is deliberately not tracked (it is only captured by `predict`):
    TF Serving loads a SavedModel into a session and restores its variables by name
    (LoadSavedModel: the saver_def's restore op), then runs the signatures' graphs. Tracking
    a Keras 3 model saves its `keras.Variable` wrappers, which the restore op fills, while
    the traced functions read the wrapped tf.Variables: under TF Serving every request then
    fails with "Could not find variable block1_conv1/kernel" (TF's own object-based loader,
    tf.saved_model.load, maps both and hides it). `track_captured_variables` tracks exactly
    the variables the signatures read, as Keras' own ExportArchive does
    (keras/src/export/saved_model_export_archive.py, `_filter_and_track_resources`).
    tests/integration/test_version_skew.py loads the export the session way.
    """

    def __init__(self, model: keras.Model, classes: list[str], labels_file: Path):
        super().__init__(name="vgg16_transfer")
        self.class_names = tf.constant(classes, dtype=tf.string)
        self.num_classes = len(classes)
        self.labels = tf.saved_model.Asset(str(labels_file))  # copied to assets/labels.txt
        # The network and the decoding are each traced once and shared by the signatures
        # (tracing is most of an export's time). They are kept out of the module's tracked
        # attributes: the signatures call them, and saving them again as functions of their
        # own would trace them a second time for nothing.
        self._traced = SimpleNamespace(
            predict=tf.function(
                lambda images: model(images, training=False),
                input_signature=[tf.TensorSpec([None, *IMAGE_SIZE, 3], tf.float32)],
                autograph=False),
            decode=tf.function(preprocess_batch,
                               input_signature=[tf.TensorSpec([None], tf.string)],
                               autograph=False))

    def _scores(self, preprocessed: tf.Tensor) -> tf.Tensor:
        """Class probabilities; an empty batch skips the network (oneDNN's convolution
        fails on zero images)."""
        return tf.cond(tf.shape(preprocessed)[0] > 0, lambda: self._traced.predict(preprocessed),
                       lambda: tf.zeros([0, self.num_classes], tf.float32))

    def _outputs(self, preprocessed: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = self._scores(preprocessed)
        top = tf.argmax(scores, axis=1, output_type=tf.int32)
        batch = tf.shape(scores)[0]
        return {
            "label": tf.gather(self.class_names, top),
            "score": tf.reduce_max(scores, axis=1),
            "classes": tf.tile(self.class_names[None, :], [batch, 1]),
            "scores": scores,
        }

    def track_captured_variables(self, signatures: dict) -> None:
        """Track every variable the signatures' concrete functions capture (see above)."""
        seen, variables = set(), []
        for function in signatures.values():
            for v in function.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        self.graph_variables = variables

    def _from_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Every output for every item; the network sees only the good images."""
        images, positions, errors = self._traced.decode(image_bytes)
        n = tf.shape(image_bytes, out_type=tf.int64)[0]
        good = self._scores(images)
        scores = tf.scatter_nd(positions[:, None], good,
                               tf.stack([n, tf.shape(good, out_type=tf.int64)[1]]))
        ok = tf.equal(errors, "")
        top = tf.argmax(scores, axis=1, output_type=tf.int32)
        return {
            "label": tf.where(ok, tf.gather(self.class_names, top), tf.constant("")),
            "score": tf.reduce_max(scores, axis=1),
            "classes": tf.tile(self.class_names[None, :], [tf.cast(n, tf.int32), 1]),
            "scores": scores,
            ERROR_OUTPUT: errors,
        }

    def signatures(self) -> dict:
        """The three signatures' concrete functions, each traced once. They are not
        attributes of the module: saving traces a tracked tf.function again (under the save
        context) although the signatures already hold its graph."""
        def traced(method, spec: tf.TensorSpec):
            return tf.function(method, input_signature=[spec],
                               autograph=False).get_concrete_function()

        return {
            SERVING_DEFAULT: traced(self.serve_image_bytes,
                                    tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)),
            PREDICT_IMAGES: traced(self.serve_images, tf.TensorSpec(
                [None, *IMAGE_SIZE, 3], tf.float32, name=IMAGES_INPUT)),
            CLASSIFY: traced(self.serve_classify,
                             tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)),
        }

    def serve_image_bytes(self, image_bytes):
        return self._from_bytes(image_bytes)

    def serve_images(self, images):
        return self._outputs(vgg_preprocess(images))

    def serve_classify(self, inputs):
        out = self._from_bytes(example_images(inputs))
        return {"classes": out["classes"], "scores": out["scores"]}


def example_images(serialized: tf.Tensor) -> tf.Tensor:
    """[N] serialized tf.Examples -> [N] image bytes: each one's single `image/encoded`
    value, or "" (which serving_default's decoding reports as not an image) for an item that
    is not an Example, lacks the feature, holds another type or more than one value.

    tf.io.parse_example fails the whole call on any such item, and under TF Serving's
    batching one client's malformed Example would then fail every Classify request batched
    with it. Each item is parsed where a failure drops only that item (tf.data's
    ignore_errors, as preprocessing._dropping_pass does for images)."""
    spec = {EXAMPLE_IMAGE_FEATURE: tf.io.VarLenFeature(tf.string)}

    def parse(i, example):
        values = tf.io.parse_single_example(example, spec)[EXAMPLE_IMAGE_FEATURE].values
        check = tf.debugging.assert_equal(tf.size(values), 1)
        with tf.control_dependencies([check]):
            return i, tf.identity(values[0])

    n = tf.size(serialized, out_type=tf.int64)
    items = tf.data.Dataset.from_tensor_slices((tf.range(n), serialized)).map(parse)
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.constant("")))
    found, images = items.ignore_errors(log_warning=False).concatenate(end).batch(
        n + 1).get_single_element()
    return tf.tensor_scatter_nd_update(tf.fill([n], ""), found[:-1, None], images[:-1])


def export_saved_model(model: keras.Model, classes: list[str], version_dir: Path,
                       warmup_images: list[bytes]):
    """Write the SavedModel (plus labels and warmup records) into `version_dir`. Returns
    serving_default's concrete function: the very graph saved, which TF Serving runs."""
    version_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labels-") as tmp:
        labels = Path(tmp) / LABELS_FILE  # an Asset keeps its file name: assets/labels.txt
        labels.write_text("".join(f"{c}\n" for c in classes))
        module = Classifier(model, classes, labels)
        signatures = module.signatures()
        module.track_captured_variables(signatures)
        tf.saved_model.save(module, str(version_dir), signatures=signatures)
    write_warmup(version_dir / WARMUP_FILE, warmup_images[:WARMUP_RECORDS])
    return signatures[SERVING_DEFAULT]


def write_warmup(path: Path, images: list[bytes]) -> None:
    """TF Serving replays these PredictionLog records before the version becomes AVAILABLE,
    so the first real request does not pay for graph initialisation."""
    from tensorflow_serving.apis import (
        classification_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    # Each image alone, then one batch mixing good images with bad ones: the per-item error
    # path is warm too, and a graph that failed on it would fail the load, not a client.
    batches = [[image] for image in images]
    if images:
        batches.append([images[0], WARMUP_BAD_IMAGE, *images[1:2]])
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=SERVING_DEFAULT))
            request.inputs[IMAGE_BYTES_INPUT].CopyFrom(
                tf.make_tensor_proto(batch, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
        if images:  # the Classify path too, so its graph is warm as well
            request = classification_pb2.ClassificationRequest(
                model_spec=model_pb2.ModelSpec(signature_name=CLASSIFY))
            example = request.input.example_list.examples.add()
            example.features.feature[EXAMPLE_IMAGE_FEATURE].bytes_list.value.append(images[0])
            log = prediction_log_pb2.PredictionLog(
                classify_log=prediction_log_pb2.ClassifyLog(request=request))
            writer.write(log.SerializeToString())
