"""indexshift: safe, zero-downtime, recoverable index migrations (OpenSearch, Elasticsearch)."""

__version__ = "0.1.0"
