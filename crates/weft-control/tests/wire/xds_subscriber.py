"""A config-stream subscriber written against the wire protocol, not weft's
client: Python gRPC stubs generated here from the .proto files, one delta
subscription to istio.workload.Address, every resource decoded and printed
as JSON for the Rust test to check.

usage: xds_subscriber.py <proto-dir> <host:port>
"""

import ipaddress
import json
import os
import queue
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

ADDRESS = "type.googleapis.com/istio.workload.Address"


def generate(proto_dir):
    out = tempfile.mkdtemp(prefix="weft-py-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"-I{include}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        "discovery.proto", "workload.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)


def main():
    proto_dir, target = sys.argv[1], sys.argv[2]
    generate(proto_dir)
    import discovery_pb2
    import discovery_pb2_grpc
    import workload_pb2

    outbox = queue.Queue()
    outbox.put(discovery_pb2.DeltaDiscoveryRequest(
        node=discovery_pb2.Node(id="python-wire-test"), type_url=ADDRESS))

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    channel = grpc.insecure_channel(target)
    stub = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    responses = stub.DeltaAggregatedResources(requests(), timeout=20)
    response = next(responses)
    outbox.put(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS, response_nonce=response.nonce))
    outbox.put(None)

    decoded = []
    for res in response.resources:
        if res.resource.type_url != ADDRESS:
            sys.exit(f"unexpected type {res.resource.type_url}")
        address = workload_pb2.Address.FromString(res.resource.value)
        kind = address.WhichOneof("type")
        if kind == "workload":
            w = address.workload
            decoded.append({
                "name": res.name, "version": res.version, "kind": kind,
                "uid": w.uid, "workload": w.name, "namespace": w.namespace,
                "addresses": [str(ipaddress.ip_address(a)) for a in w.addresses],
                "service_account": w.service_account, "trust_domain": w.trust_domain,
                "node": w.node, "tunnel": workload_pb2.TunnelProtocol.Name(w.tunnel_protocol),
                "locality": [w.locality.region, w.locality.zone, w.locality.subzone],
                "services": {k: [[p.service_port, p.target_port] for p in v.ports] for k, v in w.services.items()},
            })
        else:
            s = address.service
            decoded.append({
                "name": res.name, "version": res.version, "kind": kind,
                "service": s.name, "namespace": s.namespace, "hostname": s.hostname,
                "addresses": [str(ipaddress.ip_address(a.address)) for a in s.addresses],
                "ports": [[p.service_port, p.target_port] for p in s.ports],
            })
    print(json.dumps({"version": response.system_version_info, "nonce": response.nonce, "resources": decoded}))
    channel.close()


if __name__ == "__main__":
    main()
