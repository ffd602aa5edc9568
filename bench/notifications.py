"""Webhook freshness and throughput against `metergate dev` over real HTTP (prints JSON).

- freshness: for each trial a new subject with a 100-token grant and a 50% rule; one event of 60 tokens is
  ingested over HTTP and the time from the ingest's 204 to the webhook's arrival at a local receiver is taken;
- throughput: N subjects cross their threshold in one ingest batch; webhooks per second until all arrived.
Target (issue "Notifications"): freshness p99 <= 2 s on the embedded path.
Usage: python bench/notifications.py [--trials 50] [--burst 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gateway import dev_server, ok


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}  # subject -> monotonic arrival time
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.arrivals.setdefault(body["data"]["subject"]["key"], time.monotonic())
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, subjects: set[str], within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not subjects <= self.arrivals.keys() and time.monotonic() < deadline:
            time.sleep(0.002)


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entitle(c: httpx.Client, subject: str) -> None:
    ok(
        c.post(
            f"/subjects/{subject}/entitlements",
            json={"type": "metered", "featureKey": "t", "usagePeriod": {"interval": "MONTH"}},
        ),
        201,
    )
    ok(
        c.post(
            f"/subjects/{subject}/entitlements/t/grants",
            json={"amount": 100, "effectiveAt": now_text(), "expiration": {"duration": "MONTH", "count": 1}},
        ),
        201,
    )


def crossing(subject: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "bench",
        "type": "tokens",
        "subject": subject,
        "time": now_text(),
        "data": {"tokens": 60},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    receiver = Receiver()
    with (
        tempfile.TemporaryDirectory() as tmp,
        dev_server(Path(tmp) / "data") as base,
        httpx.Client(base_url=base + "/api/v1", timeout=30) as c,
    ):
        ok(
            c.post(
                "/meters",
                json={"slug": "tokens", "aggregation": "SUM", "eventType": "tokens", "valueProperty": "$.tokens"},
            ),
            201,
        )
        ok(c.post("/features", json={"key": "t", "name": "T", "meterSlug": "tokens"}), 201)
        channel = ok(c.post("/notification/channels", json={"type": "WEBHOOK", "name": "b", "url": receiver.url}), 201)
        ok(
            c.post(
                "/notification/rules",
                json={
                    "type": "entitlements.balance.threshold",
                    "name": "half",
                    "channels": [channel["id"]],
                    "thresholds": [{"type": "USAGE_PERCENTAGE", "value": 50}],
                },
            ),
            201,
        )
        latencies = []
        for i in range(args.trials):
            subject = f"fresh-{i}"
            entitle(c, subject)
            r = c.post("/events", json=crossing(subject), headers={"content-type": "application/cloudevents+json"})
            ok(r, 204)
            acked = time.monotonic()
            receiver.wait({subject})
            if subject in receiver.arrivals:
                latencies.append(receiver.arrivals[subject] - acked)
        subjects = [f"burst-{i}" for i in range(args.burst)]
        for subject in subjects:
            entitle(c, subject)
        started = time.monotonic()
        ok(
            c.post(
                "/events",
                json=[crossing(s) for s in subjects],
                headers={"content-type": "application/cloudevents-batch+json"},
            ),
            204,
        )
        receiver.wait(set(subjects), within=120)
        delivered = [receiver.arrivals[s] for s in subjects if s in receiver.arrivals]
        elapsed = (max(delivered) - started) if delivered else float("nan")
    print(
        json.dumps(
            {
                "freshness_ms": {
                    "trials": args.trials,
                    "delivered": len(latencies),
                    "p50": round(statistics.median(latencies) * 1000, 1) if latencies else None,
                    "p99": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
                    "target_p99": 2000,
                },
                "burst": {
                    "subjects": args.burst,
                    "delivered": len(delivered),
                    "seconds": round(elapsed, 3),
                    "webhooks_per_second": round(len(delivered) / elapsed, 1) if delivered else None,
                },
                "machine": {"cpus": __import__("os").cpu_count()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
