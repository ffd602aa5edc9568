"""Ingest: HTTP CloudEvents ingest, the Kafka producer, and the sink worker (Kafka -> ClickHouse)."""
