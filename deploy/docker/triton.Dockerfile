# syntax=docker/dockerfile:1
# llmesh on GPU: the official Triton container (pinned NGC release) serving the llmesh model
# repository. Models run in Triton's python backend through the llmesh engine, which needs the
# engine code, its Python packages and the built weights next to the repository.
#   make model && docker build -f deploy/docker/triton.Dockerfile -t llmesh/triton:0.1.0 .
# 25.01 = Triton 2.54, Ubuntu 24.04, Python 3.12, CUDA 12.8: the engine code the python model
# imports targets Python >= 3.11, which the 24.x (Python 3.10) images do not have.

# --- repository: the llmesh python model (model_repository/) plus the onnxruntime-backend GPU
# variants (gpu/<name>-<precision>-onnx/config.pbtxt, with the built graph copied into 1/) -----
FROM nvcr.io/nvidia/tritonserver:25.01-py3 AS repository
COPY deploy/triton/ /src/triton/
COPY build/models/smollm2-135m/int8/ /src/models/smollm2-135m/int8/
COPY build/models/smollm2-135m/fp32/ /src/models/smollm2-135m/fp32/
RUN mkdir -p /out \
 && cp -r /src/triton/model_repository /out/model_repository \
 && sed -i 's/string_value: "CPUExecutionProvider"/string_value: "CUDAExecutionProvider,CPUExecutionProvider"/' \
      /out/model_repository/*/config.pbtxt \
 && for dir in /src/triton/gpu/*-onnx; do \
      name="$(basename "$dir")"; base="${name%-onnx}"; precision="${base##*-}"; model="${base%-*}"; \
      mkdir -p "/out/model_repository/$name/1" \
      && cp "$dir/config.pbtxt" "/out/model_repository/$name/" \
      && cp "/src/models/$model/$precision/model.onnx" "/src/models/$model/$precision/model.onnx.data" \
            "/out/model_repository/$name/1/" || exit 1; \
    done

# --- runtime ---------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tritonserver:25.01-py3
# The python backend embeds the image's own interpreter, so packages go there (wheels only).
COPY deploy/docker/requirements/common.txt deploy/docker/requirements/triton.txt /tmp/req/
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --disable-pip-version-check \
      --only-binary=:all: -r /tmp/req/triton.txt \
 && rm -rf /tmp/req
ENV PYTHONPATH=/opt/llmesh \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMESH_TRITON_MODELS_DIR=/opt/llmesh/build/models
WORKDIR /opt/llmesh
COPY --from=repository /out/model_repository/ model_repository/
COPY libs/__init__.py libs/
COPY libs/runtime/ libs/runtime/
COPY services/__init__.py services/
COPY services/inference/ services/inference/
COPY build/models/smollm2-135m/int8/ build/models/smollm2-135m/int8/
# The image's unprivileged user.
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
CMD ["tritonserver", "--model-repository=/opt/llmesh/model_repository", "--strict-readiness=true"]
