"""`serving local --mixed_precision=bfloat16`, as TF Serving's flag: the server runs the same
SavedModel with grappler's oneDNN bfloat16 rewrite, so its scores move a little and its
answers (top-1) do not; any other value is TF Serving's warning and float32."""

from __future__ import annotations

import numpy as np
import pytest

from serving.client import GrpcClient
from tools.model_server import LocalServer
from trainer.precision import BF16_CPU_FLAGS, cpu_flags


def classify_all(tiny_model, server: LocalServer) -> np.ndarray:
    with GrpcClient(server.grpc_target) as client:
        answers = client.classify([data for _, data in tiny_model.files], tiny_model.name)
    assert all(a.error == "" for a in answers)
    return np.array([a.scores for a in answers])


def trainers_scores(tiny_model) -> np.ndarray:
    """The trainer's own float32 probabilities for every image, in the order served."""
    return np.array([tiny_model.expected[path] for path, _ in tiny_model.files])


def serve(tiny_model, tmp_path, *flags: str) -> tuple[np.ndarray, str]:
    server = LocalServer(["--model-name", tiny_model.name, "--model-base-path",
                          str(tiny_model.base_path), *flags], tmp_path / "server.log")
    server.start(wait_for_model=tiny_model.name)
    try:
        scores = classify_all(tiny_model, server)
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]
    return scores, server.log_text()


@pytest.mark.skipif(not cpu_flags() & set(BF16_CPU_FLAGS),
                    reason="this CPU has neither AVX512-BF16 nor AMX-BF16: oneDNN would "
                           "emulate bfloat16, and grappler's rewrite may leave the graph as it is")
def test_bfloat16_serving_moves_the_scores_a_little_and_the_answers_not_at_all(tiny_model,
                                                                                tmp_path):
    expected = trainers_scores(tiny_model)
    scores, log = serve(tiny_model, tmp_path, "--mixed_precision=bfloat16")
    assert "Running inference with bfloat16 auto mixed precision" in log
    assert list(scores.argmax(axis=1)) == list(expected.argmax(axis=1))
    apart = float(np.abs(scores - expected).max())
    assert 0 < apart < 0.05, apart  # really computed in bfloat16, and close to float32


def test_another_mixed_precision_is_tf_servings_warning_and_float32(tiny_model, tmp_path):
    expected = trainers_scores(tiny_model)
    scores, log = serve(tiny_model, tmp_path, "--mixed_precision", "float16")
    assert "float16 auto mixed precision is not supported. Valid option: bfloat16" in log
    np.testing.assert_allclose(scores, expected, atol=1e-5)
