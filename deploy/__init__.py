"""Deployment files (compose, Kubernetes, Prometheus, Grafana) and the generators of what
derives from the code: render.py (permissions, configs) and asyncapi.py (docs/asyncapi/)."""
