# syntax=docker/dockerfile:1
# llmesh edge: Envoy plus the proto descriptor its gRPC-JSON transcoder reads. The config comes
# from the `envoy` ConfigMap (k8s) or deploy/k8s/base/envoy/ (compose), mounted at
# /etc/envoy/config.
#   docker build -f deploy/docker/envoy.Dockerfile -t llmesh/envoy:0.1.0 .

# --- descriptor: every llmesh proto with imports and source info, plus the google.rpc status
# types Envoy needs to print a gRPC error as JSON (convert_grpc_status) ----------------------------
FROM python:3.11.11-slim-bookworm AS descriptor
WORKDIR /src
COPY deploy/docker/requirements/stubs.txt /tmp/stubs.txt
RUN python -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/stubs.txt
COPY protos/ protos/
RUN cd protos \
 && /opt/tools/bin/python -m grpc_tools.protoc -I. -Ivendor --include_imports --include_source_info \
      -I/opt/tools/lib/python3.11/site-packages \
      --descriptor_set_out=/src/llmesh.binpb llmesh/*/v1/*.proto \
      google/rpc/status.proto google/rpc/error_details.proto

# --- runtime ---------------------------------------------------------------------------------
FROM envoyproxy/envoy:v1.40.0
COPY --from=descriptor /src/llmesh.binpb /etc/envoy/llmesh.binpb
# The image's `envoy` user (uid 101); the entrypoint runs envoy directly when not root.
USER 101:101
EXPOSE 8080 9902
# checkov:skip=CKV_DOCKER_2: the envoy image ships no HTTP client; k8s probes GET :9902/ready
CMD ["envoy", "--config-path", "/etc/envoy/config/envoy.yaml", "--concurrency", "2"]
