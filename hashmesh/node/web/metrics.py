"""What an operator on call needs to see: Prometheus metrics and the last hour's history.

Counters are fed by the store's decision listener (every batch ingested, whatever its
source), by the peer layer and by an HTTP middleware; gauges are read when scraped. The
history keeps one bucket per minute for the status page's chart: propagation delay of
batches received from peers (receipt time minus the author's header timestamp) and the
sync traffic in both directions.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hashmesh.node.store.core import IngestResult, now_ms
from hashmesh.protocol.ops import AddOp, OpinionOp, RevokeOp

if TYPE_CHECKING:
    from hashmesh.node.net.sync import Replicator
    from hashmesh.node.service import NodeService
    from hashmesh.node.store.executor import StoreThread
    from hashmesh.protocol.sync import Vector

HISTORY_MINUTES = 60
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Minute:
    minute: int
    received: int = 0
    sent: int = 0
    delay_count: int = 0
    delay_sum_ms: int = 0
    delay_max_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        mean = self.delay_sum_ms / self.delay_count if self.delay_count else None
        return {
            "minute": self.minute,
            "received": self.received,
            "sent": self.sent,
            "delay_mean_ms": None if mean is None else round(mean, 1),
            "delay_max_ms": self.delay_max_ms if self.delay_count else None,
        }


class History:
    """Per-minute buckets of the last hour; written from the store thread, read by the API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minutes: deque[Minute] = deque(maxlen=HISTORY_MINUTES)

    def _bucket(self) -> Minute:
        minute = int(time.time() // 60)
        if not self._minutes or self._minutes[-1].minute != minute:
            self._minutes.append(Minute(minute))
        return self._minutes[-1]

    def received(self, delay_ms: int) -> None:
        with self._lock:
            bucket = self._bucket()
            bucket.received += 1
            bucket.delay_count += 1
            bucket.delay_sum_ms += max(0, delay_ms)
            bucket.delay_max_ms = max(bucket.delay_max_ms, max(0, delay_ms))

    def sent(self, batches: int) -> None:
        with self._lock:
            self._bucket().sent += batches

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            now = int(time.time() // 60)
            return [m.to_json() for m in self._minutes if now - m.minute < HISTORY_MINUTES]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter(
            "hashmesh_batches_ingested",
            "Batches ingested, by source and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.ops = Counter("hashmesh_ops_applied", "Ops applied, by kind", ["kind"], registry=r)
        self.refused = Counter(
            "hashmesh_batches_refused",
            "Batches or requests refused from peers, by reason",
            ["reason"],
            registry=r,
        )
        self.sync_rounds = Counter(
            "hashmesh_sync_rounds",
            "Anti-entropy exchanges, by peer and result",
            ["peer", "result"],
            registry=r,
        )
        self.requests = Counter(
            "hashmesh_http_requests",
            "HTTP requests, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.match_requests = Counter(
            "hashmesh_match_requests", "Match requests (each may hold many queries)", registry=r
        )
        self.match_latency = Histogram(
            "hashmesh_match_latency_seconds",
            "Latency of match requests",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.propagation = Histogram(
            "hashmesh_propagation_delay_seconds",
            "Receipt time minus the author's header timestamp, for batches from peers",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.history = History()

    def observe_ingest(self, result: IngestResult, source: str) -> None:
        kind = source.split(":", 1)[0]
        now = now_ms()
        for decision in result.decisions:
            outcome = type(decision).__name__.lower()
            self.batches.labels(kind, "applied" if outcome == "apply" else outcome).inc()
            if outcome != "apply":
                continue
            batch = decision.batch
            adds = revokes = opinions = 0
            for op in batch.ops:
                if isinstance(op, AddOp):
                    adds += 1
                elif isinstance(op, RevokeOp):
                    revokes += 1
                elif isinstance(op, OpinionOp):
                    opinions += 1
            for name, n in (("add", adds), ("revoke", revokes), ("opinion", opinions)):
                if n:
                    self.ops.labels(name).inc(n)
            if kind == "peer":
                delay = now - batch.header.ts
                self.propagation.observe(max(0, delay) / 1000)
                self.history.received(delay)

    def render(self, collections: frozenset[str] | None = None) -> bytes:
        """The exposition text; for a token restricted to `collections`, only their series.

        Only series labelled `collection` belong to a collection. Every other series
        (ingest and HTTP counters, index size, per-peer health) sums or names what the
        node holds for all collections, so a restricted token does not see it.
        """
        if collections is None:
            return generate_latest(self.registry)
        return generate_latest(_OnlyCollections(self.registry, collections))


class _OnlyCollections:
    """A registry view holding the samples of some collections (what generate_latest reads)."""

    def __init__(self, registry: CollectorRegistry, collections: frozenset[str]) -> None:
        self.registry = registry
        self.collections = collections

    def collect(self) -> Any:
        for family in self.registry.collect():
            samples = [s for s in family.samples if s.labels.get("collection") in self.collections]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


class NodeCollector(Collector):
    """Gauges read at scrape time from the running node.

    A scrape runs on the event loop, which must not touch the write connection: what
    needs the store is read on the store thread by `refresh` just before, and kept here.
    """

    def __init__(
        self, service: NodeService, store_thread: StoreThread, replicator: Replicator
    ) -> None:
        self.service = service
        self.store_thread = store_thread
        self.replicator = replicator
        self.live_counts: dict[str, int] = {}
        self.vector: Vector = {}

    async def refresh(self) -> None:
        """Read what /metrics reports from the store, on the store thread."""
        store = self.service.store
        self.live_counts, self.vector = await self.store_thread.call(
            lambda: (store.counts()["live_by_collection"], store.vector())
        )

    def collect(self) -> Any:
        index = GaugeMetricFamily("hashmesh_index_size", "Signals in the PDQ index")
        index.add_metric([], self.service.matcher.size)
        yield index
        intake = GaugeMetricFamily(
            "hashmesh_intake_pending_batches",
            "Own batches signed and journalled, not yet in the database (node/intake.py)",
        )
        intake.add_metric([], self.service.intake.pending())
        yield intake
        live = GaugeMetricFamily(
            "hashmesh_live_signals", "Live signals by collection", labels=["collection"]
        )
        for collection, count in self.live_counts.items():
            live.add_metric([collection], count)
        yield live
        lag = GaugeMetricFamily(
            "hashmesh_peer_lag_batches",
            "Batches a peer lacks of the logs shared with it",
            labels=["peer"],
        )
        score = GaugeMetricFamily("hashmesh_peer_score", "Misbehaviour score", labels=["peer"])
        reachable = GaugeMetricFamily("hashmesh_peer_reachable", "1 if reachable", labels=["peer"])
        for peer in self.service.config.peers:
            state = self.replicator.peer_status(peer, self.vector)
            lag.add_metric([peer.name], state["lag_summary"]["behind"])
            score.add_metric([peer.name], state["score"])
            reachable.add_metric([peer.name], 1 if state["reachable"] else 0)
        refused = CounterMetricFamily(
            "hashmesh_peer_refused",
            "Requests or batches refused from peers, by reason",
            labels=["peer", "reason"],
        )
        for peer in self.service.config.peers:
            for reason, count in self.replicator.peers.state(peer.node_id).refused.items():
                refused.add_metric([peer.name, reason], count)
        yield lag
        yield score
        yield reachable
        yield refused


def route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def middleware(metrics: Metrics) -> Any:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response = await handler(request)
        route = route_name(request)
        metrics.requests.labels(route, str(response.status)).inc()
        if route.startswith("/v1/match"):
            metrics.match_requests.inc()
            metrics.match_latency.observe(time.perf_counter() - start)
        return response

    return count
