"""Kubernetes (KubeRay) support: pure rendering (`render`) and API calls (`client`); the commands are
in orchestrator/cli (k8s.py, cluster.py).

`render` imports neither Ray nor the kubernetes client, so manifests can be rendered and tested
anywhere; `client` is the only module that talks to an API server.
"""
