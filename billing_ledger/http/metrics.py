"""Prometheus metrics, on a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

READ_CACHE_FIGURES = ("entries", "snapshots", "bytes", "hits", "misses")


class Metrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = self._counter(
            "ledger_webhook_events_total",
            "Verified webhook events by outcome (recorded, duplicate)",
            "outcome",
        )
        self.rejections = self._counter(
            "ledger_webhook_rejections_total", "Rejected webhook requests by reason", "reason"
        )
        self.latency = Histogram(
            "ledger_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.head = self._gauge("ledger_head_position", "Greatest stored position")
        self.projection_position = self._gauge(
            "ledger_projection_position", "Position applied by each projection", "projection"
        )
        self.projection_skipped = self._gauge(
            "ledger_projection_skipped_events",
            "Events each projection skipped for their content (recorded with its position)",
            "projection",
        )
        self.projection_lag = self._gauge(
            "ledger_projection_lag",
            "Positions stored but not yet applied, by projection",
            "projection",
        )
        self.read_cache = self._read_cache_gauges()
        self.reads_waiting = self._gauge(
            "ledger_reads_waiting", "Reads waiting for a min_position now"
        )

    def _read_cache_gauges(self) -> dict[str, Gauge]:
        """The read caches (projections/cache.py), by cache; hits and misses since start."""
        return {
            figure: self._gauge(
                f"ledger_read_cache_{figure}",
                f"Read cache {figure} (bytes: estimated memory), by cache",
                "cache",
            )
            for figure in READ_CACHE_FIGURES
        }

    def _counter(self, name: str, text: str, *labels: str) -> Counter:
        return Counter(name, text, list(labels), registry=self.registry)

    def _gauge(self, name: str, text: str, *labels: str) -> Gauge:
        return Gauge(name, text, list(labels), registry=self.registry)

    def observe_reads(self, caches: Mapping[str, Any], waiting: int) -> None:
        """Set the read-side gauges from the caches' figures (at each scrape)."""
        for name, stats in caches.items():
            for figure, gauge in self.read_cache.items():
                gauge.labels(name).set(getattr(stats, figure))
        self.reads_waiting.set(waiting)
