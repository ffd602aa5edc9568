"""Composition root: settings per service, the CLI, and the wiring of ingest, aggregator and entitlements."""
