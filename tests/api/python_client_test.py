#!/usr/bin/python3
"""A client no one in this project wrote: Debian's python3-grpcio, knowing nothing but reflection.

Starts a real iopfd on a temporary Unix socket, lists the services through
grpc.reflection.v1alpha (hand-encoded: Debian ships no Python reflection client), fetches the file
descriptors of iopf.v1.Router, builds the message classes from them at run time, describes the
service, then calls GetInfo and Watch with those classes. Exits non-zero on any mismatch.

usage: python_client_test.py IOPFD_BINARY
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def parse(buf):
    """Minimal protobuf wire parser: [(field, value)], length-delimited values as bytes."""
    out, i = [], 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        out.append((field, value))
    return out


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def reflect(channel, request_bytes):
    call = channel.stream_stream(REFLECTION, request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
    return list(call(iter([request_bytes]), timeout=10))[0]


def main():
    iopfd = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="iopf-py-")
    sock = os.path.join(tmp, "run", "iopfd.sock")
    cfg = os.path.join(tmp, "iopfd.yaml")
    with open(cfg, "w") as f:
        f.write('listen: ["unix:%s"]\n' % sock)
        f.write("backends:\n  - name: mem\n    type: memory\n    devices:\n"
                "      - {name: nic0, handle: 3, rid: 0x0300, pasid_bits: 8}\n"
                "domains:\n  - name: host\n    chain: [{name: success}]\n"
                "attachments:\n  - {device: nic0, domain: host}\n")
    daemon = subprocess.Popen([iopfd, "--config", cfg], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 20
        while not os.path.exists(sock):
            if daemon.poll() is not None or time.time() > deadline:
                raise SystemExit("iopfd did not start: " + daemon.stderr.read().decode())
            time.sleep(0.05)
        channel = grpc.insecure_channel("unix:" + sock)
        grpc.channel_ready_future(channel).result(timeout=10)

        # 1. List the services (ServerReflectionRequest.list_services = 7).
        resp = parse(reflect(channel, field_bytes(7, b"")))
        listing = [v for f, v in resp if f == 6]
        assert listing, "no list_services_response: %r" % resp
        names = [dict(parse(svc))[1].decode() for f, svc in parse(listing[0]) if f == 1]
        print("services:", ", ".join(sorted(names)))
        assert "iopf.v1.Router" in names, names

        # 2. The file that defines the service (file_containing_symbol = 4).
        resp = parse(reflect(channel, field_bytes(4, b"iopf.v1.Router")))
        files = [v for f, v in resp if f == 4]
        assert files, "no file_descriptor_response: %r" % resp
        pool = descriptor_pool.DescriptorPool()
        protos = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                  for f, raw in parse(files[0]) if f == 1]
        added = set()
        while len(added) < len(protos):  # dependencies first
            for p in protos:
                if p.name not in added and all(d in added for d in p.dependency):
                    pool.Add(p)
                    added.add(p.name)
        service = pool.FindServiceByName("iopf.v1.Router")
        methods = {m.name: m for m in service.methods}
        print("iopf.v1.Router:", ", ".join("%s(%s)" % (m.name, m.input_type.name) for m in service.methods))
        for needed in ("GetInfo", "Watch", "ListOutstanding", "Respond", "GetStats"):
            assert needed in methods, needed

        factory = message_factory.MessageFactory(pool)

        def cls(desc):
            return factory.GetPrototype(desc)

        # 3. GetInfo with run-time classes.
        m = methods["GetInfo"]
        info = channel.unary_unary("/iopf.v1.Router/GetInfo", request_serializer=lambda x: x.SerializeToString(),
                                   response_deserializer=cls(m.output_type).FromString)(cls(m.input_type)(), timeout=10)
        print("GetInfo: daemon %s, api %s, backends %s" % (info.daemon_version, info.api_version, list(info.backends)))
        assert info.api_version == "iopf.v1"
        assert list(info.backends) == ["memory"]

        # 4. Watch: the first message is the snapshot.
        m = methods["Watch"]
        req = cls(m.input_type)(max_batch=16)
        stream = channel.unary_stream("/iopf.v1.Router/Watch", request_serializer=lambda x: x.SerializeToString(),
                                      response_deserializer=cls(m.output_type).FromString)(req, timeout=10)
        first = next(stream)
        assert first.HasField("snapshot"), first
        devices = [d.name for d in first.snapshot.devices]
        print("Watch snapshot: devices %s, domains %s, next seq %d" % (
            devices, [d.name for d in first.snapshot.domains], first.snapshot.next_seq))
        assert devices == ["nic0"], devices
        assert first.snapshot.next_seq > 0
        stream.cancel()

        # 5. The packed encoding, read with nothing but struct and the layout table of docs/api.md,
        #    carries the same events as the message encoding (the daemon's start-up events: device
        #    added, domain added, attach).
        packed_enc = m.input_type.fields_by_name["encoding"].enum_type.values_by_name["EVENT_ENCODING_PACKED"].number

        def first_batch(**kw):
            s = channel.unary_stream("/iopf.v1.Router/Watch", request_serializer=lambda x: x.SerializeToString(),
                                     response_deserializer=cls(m.output_type).FromString)(
                cls(m.input_type)(since_seq=1, max_batch=64, **kw), timeout=10)
            b = next(s)
            s.cancel()
            return b

        as_messages = first_batch()
        as_packed = first_batch(encoding=packed_enc)
        assert len(as_packed.events) == 0, as_packed
        assert len(as_packed.packed_events) % 72 == 0, len(as_packed.packed_events)
        records = list(struct.iter_unpack("<QqQQqIIIIIHBBBBBBI", as_packed.packed_events))
        assert records and len(records) == len(as_messages.events), (len(records), len(as_messages.events))
        for r, e in zip(records, as_messages.events):
            seq, time_ns, group, addr, value, device, domain = r[:7]
            etype, flags = r[11], r[12]
            assert (seq, time_ns, device, domain, value, etype) == (
                e.seq, e.time_ns, e.device, e.domain, e.value, e.type), (r, e)
            assert bool(flags & 1) == e.HasField("pasid"), (r, e)
        print("Watch packed: %d events, the same as %d messages" % (len(records), len(as_messages.events)))
        channel.close()
        print("python client: 1 passed, 0 failed")
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)
    if daemon.returncode != 0:
        raise SystemExit("iopfd exited %d on SIGTERM" % daemon.returncode)


if __name__ == "__main__":
    main()
