"""Deployment files (compose, Kubernetes, Prometheus, Grafana) and their generator."""
