"""The project's TF Serving configuration files parse, and bad ones fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.devserver import config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "serving" / "config"


def test_the_project_config_files():
    [model] = config.load_models(CONFIG_DIR / "models.config")
    assert (model.name, model.base_path, model.model_platform) == (
        "classifier", "/models/classifier", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
    batching = config.load_batching(CONFIG_DIR / "batching.config", cpu_count=2)
    assert batching.max_batch_size == 32 and batching.num_batch_threads == 1
    assert batching.max_enqueued_batches == 8 and batching.batch_timeout_micros == 10000
    assert config.load_monitoring(CONFIG_DIR / "monitoring.config") == \
        "/monitoring/prometheus/metrics"


def test_defaults_when_fields_are_missing(tmp_path):
    (tmp_path / "b").write_text("max_batch_size { value: 4 }")
    batching = config.load_batching(tmp_path / "b", cpu_count=3)
    assert (batching.batch_timeout_micros, batching.max_enqueued_batches,
            batching.num_batch_threads) == (0, 10, 3)
    (tmp_path / "m").write_text("prometheus_config { enable: true }")
    assert config.load_monitoring(tmp_path / "m") == config.DEFAULT_PROMETHEUS_PATH
    (tmp_path / "off").write_text("prometheus_config { enable: false }")
    assert config.load_monitoring(tmp_path / "off") is None


@pytest.mark.parametrize("kind, text, message", [
    ("batching", "max_batch_size: 4", "batching parameters file"),
    ("batching", "max_batch_size { value: 4 } allowed_batch_sizes: 2 allowed_batch_sizes: 3",
     "Last entry in allowed_batch_sizes must match max_batch_size"),
    ("batching", "max_batch_size { value: 4 } allowed_batch_sizes: 4 allowed_batch_sizes: 2",
     "monotonically increasing"),
    ("batching", "num_batch_threads { value: 0 }", "num_batch_threads must be at least 1"),
    # With splitting (shared_batch_scheduler.h; batching_session.cc's CreateBasicBatchingSession)
    ("batching", "max_batch_size { value: 4 } enable_large_batch_splitting { value: true } "
                 "max_execution_batch_size { value: 8 }",
     "input_batch_size_limit must be greater than or equal to max_execution_batch_size"),
    ("batching", "max_batch_size { value: 8 } enable_large_batch_splitting { value: true } "
                 "max_execution_batch_size { value: 4 } allowed_batch_sizes: 2 "
                 "allowed_batch_sizes: 8",
     "must be equal to max_execution_batch_size; last entry was 8; expected 4"),
    ("models", "model_config_list { config { name: 'a' } }", "model 'a' has no base_path"),
    ("models", "model_config_list { config { name: 'a' base_path: '/a' } "
               "config { name: 'a' base_path: '/b' } }", "model names must be unique"),
    ("models", "model_config_list { config { name: 'a' base_path: '/a' "
               "model_platform: 'pytorch' } }", "platform 'pytorch' is not supported"),
    ("models", "model_config_list { }", "no models configured"),
])
def test_bad_files(tmp_path, kind, text, message):
    path = tmp_path / "f"
    path.write_text(text)
    loader = {"batching": lambda p: config.load_batching(p, 2), "models": config.load_models}
    with pytest.raises(config.ConfigError, match=message):
        loader[kind](path)


def test_every_field_tf_serving_2_20_accepts_is_accepted_and_the_unimplemented_logged(
        tmp_path, caplog):
    """BatchingParameters at 2.20 (servables/tensorflow/session_bundle_config.proto) has
    fields 1-9; a file TF Serving takes must not stop the development server."""
    path = tmp_path / "b"
    path.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 100 }\n"
                    "max_enqueued_batches { value: 2 }\nnum_batch_threads { value: 3 }\n"
                    "thread_pool_name { value: 'pool' }\nallowed_batch_sizes: 2\n"
                    "allowed_batch_sizes: 4\npad_variable_length_inputs: true\n"
                    "enable_large_batch_splitting { value: true }\n"
                    "max_execution_batch_size { value: 4 }\n")
    with caplog.at_level("WARNING", logger="serving.devserver.config"):
        batching = config.load_batching(path, cpu_count=2)
    assert (batching.max_batch_size, batching.batch_timeout_micros,
            batching.max_enqueued_batches, batching.num_batch_threads,
            batching.thread_pool_name, batching.allowed_batch_sizes,
            batching.enable_large_batch_splitting, batching.execution_limit) == (
        8, 100, 2, 3, "pool", (2, 4), True, 4)
    ignored = " ".join(r.getMessage() for r in caplog.records)
    assert "pad_variable_length_inputs is accepted but ignored" in ignored
    assert "splitting" not in ignored and "max_execution" not in ignored
    # Splitting without max_execution_batch_size runs batches of max_batch_size, as in TF
    # Serving (bundle_factory_util.h); without splitting the field does not apply.
    (tmp_path / "s").write_text("max_batch_size { value: 6 } "
                                "enable_large_batch_splitting { value: true }")
    assert config.load_batching(tmp_path / "s", 2).execution_limit == 6
    (tmp_path / "n").write_text("max_batch_size { value: 6 } "
                                "max_execution_batch_size { value: 2 }")
    assert config.load_batching(tmp_path / "n", 2).execution_limit == 6
    # Unset, the pool has TF Serving's default name, the same with or without a file.
    (tmp_path / "min").write_text("max_batch_size { value: 4 }")
    assert config.load_batching(tmp_path / "min", 2).thread_pool_name == \
        config.load_batching(None, 2).thread_pool_name == "batch_threads"
