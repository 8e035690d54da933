"""Logs, metrics and the per-request middleware that ties them to each request."""
