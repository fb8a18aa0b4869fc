#!/usr/bin/env python3
"""A minimal OTLP/HTTP metrics and logs receiver for xdt-central's tests.

Listens on 127.0.0.1 (port 0 = any free port), prints "PORT <n>" on its first stdout line,
decodes every POST /v1/metrics as an ExportMetricsServiceRequest (the official
opentelemetry-proto package) and rewrites OUT (atomically) after each request as JSON:

  {"requests": N, "resources": [{attribute: value}], "metrics": {
      name: {"kind": "sum"|"gauge", "unit": str, "monotonic": bool,
             "points": [{"attributes": {k: v}, "value": number}]}}}

Each metric keeps the points of the newest request that carried it. Every POST /v1/logs is
decoded as an ExportLogsServiceRequest and each of its log records appended to "logs":

  {"log_requests": N, "logs": [{"event_name": str, "time_unix_nano": int, "severity": str,
      "body": str, "attributes": {k: v}, "resource": {k: v}}]}

Exits when stdin closes
(the test's guard), or after --lifetime seconds at most.

Usage: otlp_receiver.py OUT [--port N] [--lifetime SECONDS]
"""

import argparse
import http.server
import json
import os
import sys
import threading

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def point_value(p):
    return p.as_int if p.WhichOneof("value") == "as_int" else p.as_double


class State:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.doc = {"requests": 0, "resources": [], "metrics": {}, "log_requests": 0, "logs": []}

    def add_logs(self, request):
        with self.lock:
            self.doc["log_requests"] += 1
            for rl in request.resource_logs:
                resource = attributes(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        self.doc["logs"].append({
                            "event_name": r.event_name,
                            "time_unix_nano": r.time_unix_nano,
                            "severity": r.severity_text,
                            "body": any_value(r.body),
                            "attributes": attributes(r.attributes),
                            "resource": resource,
                        })
            self.write()

    def write(self):
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f)
        os.replace(tmp, self.out)

    def add(self, request):
        with self.lock:
            self.doc["requests"] += 1
            for rm in request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                if resource not in self.doc["resources"]:
                    self.doc["resources"].append(resource)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        if kind not in ("sum", "gauge"):
                            continue
                        data = getattr(m, kind)
                        self.doc["metrics"][m.name] = {
                            "kind": kind,
                            "unit": m.unit,
                            "monotonic": bool(getattr(data, "is_monotonic", False)),
                            "points": [
                                {"attributes": attributes(p.attributes), "value": point_value(p)}
                                for p in data.data_points
                            ],
                        }
            self.write()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    state = State(args.out)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path == "/v1/metrics":
                request = metrics_service_pb2.ExportMetricsServiceRequest()
                response = metrics_service_pb2.ExportMetricsServiceResponse()
                add = state.add
            elif self.path == "/v1/logs":
                request = logs_service_pb2.ExportLogsServiceRequest()
                response = logs_service_pb2.ExportLogsServiceResponse()
                add = state.add_logs
            else:
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                request.ParseFromString(body)
            except Exception as e:  # a bad body is the test's failure to see
                self.send_error(400, str(e))
                return
            add(request)
            reply = response.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, fmt, *a):
            sys.stderr.write("otlp_receiver: " + (fmt % a) + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait(args.lifetime)
    server.shutdown()


if __name__ == "__main__":
    main()
