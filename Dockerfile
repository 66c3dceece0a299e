# bgserve on the official Ray image: Ray 2.60 with CUDA, Python 3.11. Build from the repository root:
#   docker build -t bgserve:0.2.1 .                              # weights mounted at /models when it runs
#   docker build -t bgserve:0.2.1 --build-arg BAKE_WEIGHTS=1 .   # weights fetched and verified into the image
# Run one container (a GPU box):
#   docker run --gpus all --init --shm-size=8g --stop-timeout 150 -p 8000:8000 -p 8265:8265 -v $HOME/models:/models bgserve:0.2.1
#   (--init: an init as process 1 reaps the Ray daemons that `ray start` leaves behind, which our runner would not)
#   (--shm-size: Ray's object store, which carries the images between replicas, lives in /dev/shm, 64 MB by default)
#   (--stop-timeout: `docker stop` drains the service (deployments/run.py): requests in flight are answered, for up
#    to http_options.request_timeout_s, 120 s in serve_config.yaml, then Serve shuts down; Docker's default 10 s
#    would cut them off)
#   (the dashboard on 8265 asks for the token: docker exec <container> ray get-auth-token)
# On Kubernetes: deploy/kuberay/rayservice.yaml runs this image on every Ray pod (tag each build anew: the
# manifest's image name is what makes KubeRay roll a new one out).
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/bgserve
COPY --chown=ray:users pyproject.toml README.md LICENSE ./
COPY --chown=ray:users serve_app serve_app
COPY --chown=ray:users deployments deployments
COPY --chown=ray:users configs configs
COPY --chown=ray:users serve_config.yaml ./
# The gpu extra: onnxruntime-gpu and nvidia-ml-py (GPU metrics); ray[serve] is pinned to the image's version,
# torch to the version the tests run (scripts/setup.sh), so a rebuild does not pick up a newer CUDA build.
# transparent-background's opencv-python (needs libGL, which the image lacks) and our opencv-python-headless write
# the same cv2/ files: keep the headless one, as scripts/setup.sh does.
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" ".[gpu]" \
    && headless="$(python -c 'from importlib.metadata import version; print(version("opencv-python-headless"))')" \
    && pip uninstall -y opencv-python \
    && pip install --no-cache-dir --no-deps --force-reinstall "opencv-python-headless==$headless"
# pymatting's kernels for rgba's edge step (numba, cached beside its code), compiled once here as scripts/setup.sh
# does, not in each container's first start, whose readiness waits for them (~1 min on 2 cores). numba keys its
# cache by CPU: on a host of another kind than the build's, they compile again at the first start.
RUN python -c "from serve_app.effects import warm_up_matting; warm_up_matting()"
# The image runs as user ray (uid 1000, group users, gid 100): the weights folder must be its own (a download or
# the bake below writes there). A host folder mounted there keeps its host owner: chown 1000:100 it.
USER root
RUN mkdir -p /models && chown ray:users /models
USER ray

# A replica that failed its health checks is stopped at once, not drained for graceful_shutdown_timeout_s.
ENV BGSERVE_WEIGHTS_DIR=/models \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_guard:middlewares \
    RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS=1
ARG BAKE_WEIGHTS=0
RUN if [ "$BAKE_WEIGHTS" = 1 ]; then bgserve-weights fetch --config serve_config.yaml; fi

EXPOSE 8000 8265 8080
# Token authentication on: `ray start` alone leaves it off on a fresh machine, and the dashboard on 8265 would take
# jobs (code) from anyone who reaches it. The token is generated once, inside the container.
# The runner (`serve run` that drains on a stop: deployments/run.py) takes the shell's place (exec), so docker stop's
# SIGTERM reaches it.
CMD ["bash", "-c", "export RAY_AUTH_MODE=token && ray get-auth-token --generate >/dev/null && ray start --head --metrics-export-port=8080 --dashboard-host=0.0.0.0 && exec python -m deployments.run serve_config.yaml"]
