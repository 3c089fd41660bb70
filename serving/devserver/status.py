"""GetModelStatusResponse for REST and gRPC alike (model_servers/get_model_status_impl.cc)."""

from __future__ import annotations

from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2

from serving.devserver.manager import ModelManager


def status_response(manager: ModelManager, name: str, version: int | None
                    ) -> get_model_status_pb2.GetModelStatusResponse:
    """Every known version of `name`, newest first (or just `version`); NOT_FOUND if none."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for record in manager.status(name, version):
        entry = response.model_version_status.add(version=record.version,
                                                  state=int(record.state))
        entry.status.SetInParent()  # TF Serving always sends status, OK included
        if record.error is not None:
            entry.status.error_code = error_codes_pb2.Code.Value(record.error.code_name)
            entry.status.error_message = record.error.message
    return response
