# syntax=docker/dockerfile:1
# llmesh gateway: OpenAI-compatible HTTP API.
#   make model && docker build -f deploy/docker/gateway.Dockerfile -t llmesh/gateway:0.1.0 .
# Build context = repository root; gateway.Dockerfile.dockerignore keeps it small.
# Bases are pinned to patch releases; a release pins digests too (`FROM image:tag@sha256:...`).

# --- stubs: generated gRPC/protobuf code (libs/gen is never committed) -------------------------
FROM python:3.11.11-slim-bookworm AS stubs
WORKDIR /src
COPY deploy/docker/requirements/stubs.txt /tmp/stubs.txt
RUN python -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/stubs.txt
COPY protos/ protos/
RUN /opt/tools/bin/python protos/generate.py --out /src/gen

# --- deps: the service's pinned runtime packages in a venv (wheels only, no compiler) ----------
FROM python:3.11.11-slim-bookworm AS deps
COPY deploy/docker/requirements/common.txt deploy/docker/requirements/gateway.txt /tmp/req/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
      -r /tmp/req/gateway.txt

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/libs/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMESH_GATEWAY_HOST=0.0.0.0 \
    LLMESH_GATEWAY_METRICS_HOST=0.0.0.0
RUN groupadd --system --gid 10001 llmesh \
 && useradd --system --uid 10001 --gid llmesh --no-create-home --shell /usr/sbin/nologin llmesh
WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
COPY --from=stubs /src/gen/ libs/gen/
COPY libs/__init__.py libs/
COPY libs/runtime/ libs/runtime/
COPY services/__init__.py services/
COPY services/gateway/ services/gateway/
COPY deploy/docker/healthcheck.py healthcheck.py
USER 10001:10001
EXPOSE 8081 9106
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "/app/healthcheck.py", "gateway"]
CMD ["python", "-m", "services.gateway"]
