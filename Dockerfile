ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
# Build stage: a venv with the service's dependencies only (the `serve` extra: no torch).
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY app ./app
COPY training ./training
COPY ctrserve.py ./
RUN pip install --quiet '.[serve]' \
    && python -c "import app.main" \
    && ! python -c "import torch" 2>/dev/null \
    && pip uninstall --quiet --yes pip setuptools  # the service never installs anything

# The training image, for deploy/training/pytorchjob.yaml: `docker build --target train -t
# ctrserve-train .` adds torch (the `train` extra) and torchrun. A plain `docker build`
# skips this stage: the service image below never contains torch.
FROM ${BASE_IMAGE} AS train
RUN useradd --system --no-create-home --uid 10001 ctrserve
WORKDIR /src
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ctrserve.py ./
COPY app ./app
COPY training ./training
RUN python -m venv /opt/venv \
    && pip install --quiet '.[train]' \
    && python -c "import torch.distributed, training.distributed" \
    && command -v torchrun
USER ctrserve
CMD ["torchrun", "--help"]

FROM ${BASE_IMAGE}
RUN useradd --system --no-create-home --uid 10001 ctrserve
COPY --from=build /opt/venv /opt/venv
# The models are baked in (run `make models` before building; .dockerignore lets in
# models/default and models/cvr, without their training-only files): the default (click) model is
# what a plain `docker run` serves; point CTR_MODEL_REPOSITORY at /models to serve every
# model there (the Kubernetes manifests seed a shared volume with them), or at a volume.
COPY models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CTR_MODEL_REPOSITORY=/models/default \
    CTR_HOST=0.0.0.0 \
    CTR_PORT=8000 \
    CTR_WORKERS=1
USER ctrserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CTR_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "app"]
