"""Small SavedModels written by the tests, for what a server test needs from a model that the
classifier cannot give it on demand.

`write_waiting_model`: a request that takes exactly as long as it asks. Timeouts and queue
expiry depend on how long a batch runs; the classifier on the tiny base answers in
milliseconds and on VGG16 in a time that depends on the CPU. This model's `serving_default`
takes `seconds` (float [-1]) and busy-waits on the graph's own clock for the largest of them,
then answers `seconds` back: the run lasts what the request says, on any machine.
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
