"""Kubernetes (KubeRay) support: pure rendering (`render`), API calls (`client`) and the CLI (`cli`).

`render` imports neither Ray nor the kubernetes client, so manifests can be rendered and tested
anywhere; `client` is the only module that talks to an API server.
"""
