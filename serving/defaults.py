"""Defaults shared by the CLI and the servers (kept free of heavy imports: the CLI reads
them before TensorFlow is loaded)."""

GRPC_PORT = 8500  # TF Serving's defaults
REST_API_PORT = 8501
HOST = "127.0.0.1"  # loopback unless told otherwise; containers pass 0.0.0.0
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a few dozen base64 photos; raise for bigger batches
POLL_SECONDS = 1.0
REST_API_TIMEOUT_MS = 30_000  # TF Serving's --rest_api_timeout_in_ms
MAX_NUM_LOAD_RETRIES = 5  # TF Serving's --max_num_load_retries
LOAD_RETRY_INTERVAL_MICROS = 60_000_000  # TF Serving's --load_retry_interval_micros
# serving local's addition to a NOT_FOUND answer (an HTTP header, a gRPC trailing metadata
# key): the models it does serve. TF Serving has no way to list them; clients show the list
# when it is there and say nothing more when it is not.
# The client: each call's deadline, and images per request (few round trips, modest size).
CLIENT_TIMEOUT_S = 30.0
CLIENT_BATCH = 16

# The puller, with labels: how many versions to hold at most (the labelled ones always).
# Three VGG16 versions (1.65 GB) and one download (up to --max-version-mib) fit the 3Gi
# serving volume, and three loaded versions with TensorFlow fit the 4Gi server.
PULL_MAX_VERSIONS = 3

# serving local's hint on a NOT_FOUND: the models it serves. Only to a client on this very
# machine (TF Serving's answer has no such list; a remote client gets exactly TF Serving's).
SERVED_MODELS_KEY = "x-served-models"


def is_loopback(peer: str | None) -> bool:
    """A REST remote address ("127.0.0.1", "::1") or a gRPC peer ("ipv4:127.0.0.1:5555",
    "ipv6:[::1]:5555", "unix:...") on this machine."""
    import ipaddress
    from urllib.parse import unquote

    if not peer:
        return False
    peer = unquote(peer)  # gRPC may send "ipv6:%5B::1%5D:5555"
    if peer.startswith("unix:"):
        return True
    host = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    host = host.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else host
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False
