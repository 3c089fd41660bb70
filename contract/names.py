"""Names clients and the other side depend on (DESIGN sections 3 and 4), each defined once."""

from __future__ import annotations

# Signatures of the exported SavedModel. "serving_default" is also TF Serving's default key.
SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
CLASSIFY = "classify"
# Their inputs.
IMAGE_BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
CLASSIFY_INPUT = "inputs"  # TF Serving's Classify API requires exactly this input key
EXAMPLE_IMAGE_FEATURE = "image/encoded"
# Their outputs: the four every image signature has, and serving_default's fifth.
OUTPUTS = ("label", "score", "classes", "scores")
ERROR_OUTPUT = "error"  # "" for a good image, else why it could not be classified
# Files of a version folder.
SAVED_MODEL_FILE = "saved_model.pb"
LABELS_FILE = "labels.txt"  # under assets/
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
SIGNATURE_FILE = "model.sig"  # OpenSSF model signing, when the trainer has a key
# What the version is (model name, version number, class list), written by the trainer
# before signing so the signature binds it (contract.manifest.check_identity).
IDENTITY_FILE = "identity.json"
# Beside a model's version folders: its version labels (contract.labels).
LABELS_OBJECT = "_LABELS.json"
# A version folder is being assembled under a hidden, non-numeric name that starts with
# this; TF Serving and the puller ignore such folders until they are renamed to a number.
STAGING_PREFIX = ".incoming-"
# Version numbers: ASCII digits, positive, below 2**63 (TF Serving's int64).
MAX_VERSION = 2**63 - 1


def parse_version(name: str) -> int | None:
    """The version a folder name stands for, or None when it is not one."""
    if not name or not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    return version if 0 < version <= MAX_VERSION else None
