# syntax=docker/dockerfile:1
# okx-loan-exporter container image: a wheel built in a throw-away stage, installed into a venv
# in a slim runtime image that runs as a fixed non-root user. No secret is ever copied into the
# image: API keys come at run time (Docker/Kubernetes secrets or environment).
#
#   docker build -t okx-loan-exporter .
#   docker run --rm -p 9855:9855 okx-loan-exporter --demo --web.listen-address=:9855

ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# .dockerignore admits only what the wheel needs (pyproject.toml, README.md, the package).
COPY . .
# Builds the exporter's wheel and collects wheels for all its dependencies into /wheels.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=dev
LABEL org.opencontainers.image.title="okx-loan-exporter" \
      org.opencontainers.image.description="Prometheus exporter for OKX Flexible Loan: LTV, margin-call and liquidation LTV, collateral and debt" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so none of them stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/okx_loan_exporter-*.whl

# 65532: the conventional "nonroot" UID/GID of distroless images; no home, no shell needed.
USER 65532:65532
EXPOSE 9855
# Uses the Python of the venv (first on PATH); no curl in the image. Adjust the port if you
# change --web.listen-address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9855/-/healthy', timeout=4)"]
ENTRYPOINT ["okx-loan-exporter"]
CMD ["--web.listen-address=:9855"]
