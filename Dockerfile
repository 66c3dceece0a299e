# bgserve on the official Ray image: Ray 2.60 with CUDA, Python 3.11. Build from the repository root:
#   docker build -t bgserve:latest .                              # weights mounted at /models when it runs
#   docker build -t bgserve:latest --build-arg BAKE_WEIGHTS=1 .   # weights fetched and verified into the image
# Run one container (a GPU box):   docker run --gpus all -p 8000:8000 -p 8265:8265 -v $HOME/models:/models bgserve
# On Kubernetes: deploy/kuberay/rayservice.yaml runs this image on every Ray pod.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/bgserve
COPY --chown=ray:users pyproject.toml README.md LICENSE ./
COPY --chown=ray:users serve_app serve_app
COPY --chown=ray:users deployments deployments
COPY --chown=ray:users configs configs
COPY --chown=ray:users serve_config.yaml ./
# The gpu extra: onnxruntime-gpu and nvidia-ml-py (GPU metrics); ray[serve] is pinned to the image's version.
RUN pip install --no-cache-dir ".[gpu]"

ENV BGSERVE_WEIGHTS_DIR=/models \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_guard:middlewares
ARG BAKE_WEIGHTS=0
RUN if [ "$BAKE_WEIGHTS" = 1 ]; then bgserve-weights fetch --config serve_config.yaml; fi

EXPOSE 8000 8265 8080
CMD ["bash", "-c", "ray start --head --metrics-export-port=8080 --dashboard-host=0.0.0.0 && serve run serve_config.yaml"]
