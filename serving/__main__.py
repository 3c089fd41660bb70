import os

# TensorFlow's C++ info lines (CPU features, missing CUDA) drown the server's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving.cli import main  # noqa: E402

main()
