"""A tiny VGG16-shaped base model for every test that is not about VGG16 itself.

The trainer takes any base with VGG16's interface (`--base-model FILE`: a 224x224x3 input fed
VGG16-preprocessed images, a layer `fc2`). This one has VGG16's block structure (2, 2, 3, 3,
3 convolutions of 3x3, each block closed by a 2x2 max pool, then flatten, fc1, fc2 and a
softmax top) with 8 filters per convolution and 512-wide fc1 and fc2: about 0.5 M weights
(a 2 MB file) against VGG16's 134 M, and about 1/250 of its arithmetic. The pipeline, the
exports, the servers and the stores do the same work on it; only the network is cheap.

Random weights, as Hugging Face's tiny-random checkpoints, with one twist: 8 random filters
lose most of an image's colour, and the sample data's classes differ mostly by colour. So the
first six filters of every convolution carry the colours forward (block1_conv1 splits each
VGG16-preprocessed channel, scaled to about -1..1, into its positive and negative parts;
later convolutions pass those six channels through unchanged), and the max pools keep a 7x7
colour map of the image for fc1. With that, the trainer's default recipe (Adam 0.001, 10
epochs) separates the sample classes as random VGG16 does. The other filters and the fully
connected layers stay random. Seeded: every build gives the same weights, so every test
process (and xdist worker) shares one feature-cache namespace.
"""

from __future__ import annotations

from pathlib import Path

BLOCKS = (2, 2, 3, 3, 3)  # VGG16's convolutions per block
FILTERS = 8
WIDTH = 512  # fc1 and fc2 (VGG16: 4096); the trainer reads it from the file
CARRIED = 6  # channels carrying the image's colours: +B, +G, +R, -B, -G, -R
CARRY_SCALE = 1 / 128  # VGG16-preprocessed pixels are about -124..152
SEED = 20


def build_tiny_vgg16(seed: int = SEED):
    """The tiny VGG16-shaped Keras model (with a 10-way softmax top the trainer cuts off)."""
    import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((224, 224, 3), name="input_layer")
    convolutions = []
    for block, count in enumerate(BLOCKS, 1):
        for k in range(1, count + 1):
            layer = keras.layers.Conv2D(FILTERS, 3, padding="same", activation="relu",
                                        name=f"block{block}_conv{k}")
            x = layer(x)
            convolutions.append(layer)
        x = keras.layers.MaxPooling2D(2, 2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(WIDTH, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(WIDTH, activation="relu", name="fc2")(x)
    x = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name="tiny_vgg16")
    for index, layer in enumerate(convolutions):
        kernel, bias = layer.get_weights()
        kernel[..., :CARRIED] = 0.0
        bias[:CARRIED] = 0.0
        for channel in range(CARRIED):
            if index == 0:  # +x and -x of each colour channel: ReLU keeps both halves
                kernel[1, 1, channel % 3, channel] = CARRY_SCALE * (1 if channel < 3 else -1)
            else:  # the carried channels pass through (they are >= 0 after the ReLU)
                kernel[1, 1, channel, channel] = 1.0
        layer.set_weights([kernel, bias])
    return model


def write_tiny_vgg16(path: Path, seed: int = SEED) -> Path:
    """Save the tiny base as a Keras model file, the way a user saves a base to pass."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_vgg16(seed).save(path)
    return path
