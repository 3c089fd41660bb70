"""tensorflow_model_server's flags (model_servers/main.cc, TF Serving 2.20), so `serving local`
can take the command line written for the real server: flags it implements are options of
its own; the others are accepted and logged as ignored. The manifest tests also check the
Kubernetes and Docker arguments against this list."""

TF_SERVING_FLAGS = frozenset({
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "model_name", "model_base_path",
    "model_config_file", "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds",
    "allow_version_labels_for_unavailable_models", "enable_batching",
    "batching_parameters_file", "enable_per_model_batching_parameters", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "flush_filesystem_caches", "saved_model_tags", "enable_model_warmup",
    "num_request_iterations_for_warmup", "monitoring_config_file",
    "enable_signature_method_name_check", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content", "grpc_channel_arguments", "grpc_max_threads",
    "ssl_config_file", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "per_process_gpu_memory_fraction",
    "platform_config_file", "enable_profiler", "xla_cpu_compilation_enabled", "mixed_precision",
    "prefer_tflite_model", "skip_initialize_tpu", "thread_pool_factory_config_file",
    "use_alts_credentials", "version",
})
