# The image the Kubernetes manifests run (k8s/, `orchestrator k8s render`, `submit --k8s`).
# Ray and Python must match on every pod, so the base is pinned to the Ray version in pyproject.toml.
#
# CPU image:
#   docker build -t ghcr.io/orchestrator-ml/orchestrator:0.1.0-ray2.60.0 .
# GPU image (CUDA base and CUDA build of torch):
#   docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     -t ghcr.io/orchestrator-ml/orchestrator:0.1.0-ray2.60.0-gpu .
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE_IMAGE}

# CPU-only torch wheels by default; the default PyPI torch pulls several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The Ray images run as user `ray` (uid 1000, group users/100) with Python in /home/ray/anaconda3.
USER 1000:100
WORKDIR /home/ray/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 orchestrator ./orchestrator
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" . \
    && python -c "import orchestrator, ray; assert ray.__version__.startswith('2.60.'), ray.__version__"

WORKDIR /home/ray
