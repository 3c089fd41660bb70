"""gRPC clients spread their calls over every server a target resolves to.

Through a ClusterIP Service one gRPC connection sticks to one pod, so scaling out does not
help a long-lived client. With a headless Service (k8s/base/serving-service.yaml) and a
`dns:///` target the client balances itself. Two real gRPC servers on loopback stand in for
two pods; they only count the ModelService calls they answer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving.client import GrpcClient


class CountingModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self):
        self.calls = 0

    def GetModelStatus(self, request, context):
        self.calls += 1
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=30)
        return response


@pytest.fixture
def two_servers():
    servers, services = [], []
    for _ in range(2):
        service = CountingModelService()
        server = grpc.server(ThreadPoolExecutor(2))
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((server, port))
        services.append(service)
    yield [port for _, port in servers], services
    for server, _ in servers:
        server.stop(None)


def test_a_multi_address_target_spreads_calls_over_every_server(two_servers):
    ports, services = two_servers
    with GrpcClient(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", timeout=10) as client:
        for _ in range(20):
            [status] = client.status("m")
            assert status.state == "AVAILABLE"
    calls = [s.calls for s in services]
    # round_robin: about half each (the first calls go to whichever connected first).
    assert sum(calls) == 20 and min(calls) >= 7, calls


def test_a_plain_host_port_target_talks_to_one_server(two_servers):
    ports, services = two_servers
    with GrpcClient(f"127.0.0.1:{ports[0]}", timeout=10) as client:
        for _ in range(4):
            client.status("m")
    assert [s.calls for s in services] == [4, 0]


def test_dns_targets_use_round_robin(two_servers):
    ports, services = two_servers
    with GrpcClient(f"dns:///localhost:{ports[1]}", timeout=10) as client:
        client.status("m")
        assert ("grpc.lb_policy_name", "round_robin") in client_options(client)
    assert services[1].calls == 1


def client_options(client: GrpcClient) -> list:
    return client.options
