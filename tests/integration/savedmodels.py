"""Small SavedModels written by the tests, for what a server test needs from a model that the
classifier cannot give it on demand.

`write_waiting_model`: a request that takes exactly as long as it asks. Timeouts and queue
expiry depend on how long a batch runs; the classifier on the tiny base answers in
milliseconds and on VGG16 in a time that depends on the CPU. This model's `serving_default`
takes `seconds` (float [-1]) and busy-waits on the graph's own clock for the largest of them,
then answers `seconds` back: the run lasts what the request says, on any machine.

`write_tf1_linear_model` and `write_tf2_linear_model`: y = a * x + b (a = 0.5, b = 3) as
other exporters write them, for the loading and API tests of `serving local` that TF
Serving's own suite has (issue 28): a TF1 SavedModel made with the v1 builder (variables, a
Predict signature on a float placeholder, Classify and Regress signatures on serialized
tf.Examples through ParseExample), and a TF2 one made by tf.saved_model.save. Written
here, in folders named as the caller says (TF Serving's testdata uses "00000123").
"""

from __future__ import annotations

from pathlib import Path

WAITING_INPUT, WAITING_OUTPUT = "seconds", "waited"


def write_waiting_model(version_dir: Path) -> Path:
    import tensorflow as tf

    class Waiting(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=WAITING_INPUT)])
        def serve(self, seconds):
            wanted = tf.cast(tf.reduce_max(tf.concat([seconds, [0.0]], 0)), tf.float64)
            start = tf.timestamp()
            waited = tf.while_loop(lambda now: now - start < wanted,
                                   lambda _: [tf.timestamp()], [start])
            with tf.control_dependencies(waited):
                return {WAITING_OUTPUT: tf.identity(seconds)}

    module = Waiting()
    tf.saved_model.save(module, str(version_dir),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    return version_dir


LINEAR_A, LINEAR_B = 0.5, 3.0


def write_tf1_linear_model(version_dir: Path) -> Path:
    """TF1: signatures serving_default (predict x -> y, x float [-1, 1]), regress_x_to_y
    and classify_x_to_y (inputs: serialized Examples with a float feature "x"; regress
    outputs y, classify gives y as its one score), as tf.compat.v1's builder writes them."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        a = v1.get_variable("a", initializer=LINEAR_A)
        b = v1.get_variable("b", initializer=LINEAR_B)
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        parsed = v1.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        y_examples = tf.add(a * parsed["x"], b, name="y_from_examples")
        x = v1.placeholder(tf.float32, [None, 1], name="x")
        y = tf.add(a * x, b, name="y")
        builder = v1.saved_model.Builder(str(version_dir))
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y}),
                "regress_x_to_y": v1.saved_model.regression_signature_def(examples,
                                                                          y_examples),
                "classify_x_to_y": v1.saved_model.classification_signature_def(
                    examples, None, y_examples)})
        builder.save()
    return version_dir


def write_tf2_linear_model(version_dir: Path) -> Path:
    """TF2: serving_default x float [-1] -> y, with a and b as variables."""
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = tf.Variable(LINEAR_A), tf.Variable(LINEAR_B)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + self.b}

    module = Linear()
    tf.saved_model.save(module, str(version_dir),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    return version_dir


def example(x: float) -> bytes:
    """A serialized tf.Example with the float feature "x"."""
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})).SerializeToString()


def write_keras_model(version_dir: Path) -> Path:
    """Keras 3's own export (`Model.export`, its ExportArchive): y = 2 x, input "x" [-1, 1]."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((1,), name="x"),
                              keras.layers.Dense(1, kernel_initializer="ones",
                                                 bias_initializer="zeros", name="double")])
    model.layers[0].set_weights([np.array([[2.0]], "float32"), np.zeros(1, "float32")])
    model.export(str(version_dir), verbose=False)
    return version_dir
