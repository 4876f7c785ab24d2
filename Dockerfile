# syntax=docker/dockerfile:1.7
# imconnector-consumer image: Kafka chat events -> Bitrix24 imconnector.* (see README).
#   docker build -t imconnector-consumer:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
# VERSION's default is the package version (pyproject.toml; a test keeps them equal).
#
# The base is pinned by digest: the same bytes on every build. To move to the newest
# python:3.11-slim-bookworm, look its digest up and replace the one below:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# (or: crane digest python:3.11-slim-bookworm). Builder and runtime must use the same
# image: the venv points at its interpreter.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---- build: a self-contained venv with the project and its dependencies ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, exactly as locked (versions and hashes: requirements.lock, made by
# `pip-compile --generate-hashes --extra otel ... pyproject.toml`, see its header), so a
# source change reuses this layer. The lock includes the `otel` extra: tracing is in the
# image, off until OTEL_TRACES_EXPORTER is set. confluent-kafka and fastavro ship binary
# wheels (librdkafka bundled): no compiler needed.
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md* ./
COPY consumer/ consumer/
COPY schemas/ schemas/
# The project itself (non-editable), then bytecode compiled now: at run time the root
# filesystem is read-only and PYTHONDONTWRITEBYTECODE is set.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib \
    && imconnector-consumer --help > /dev/null

# ---- runtime: the venv, a numeric non-root user, nothing else ------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Re-declared: an ARG from before the first FROM is not visible inside a stage.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="imconnector-consumer" \
      org.opencontainers.image.description="Mirrors Avro chat events from Kafka into Bitrix24 Open Channels (imconnector.*) exactly once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# A fixed, numeric UID/GID: Kubernetes can only verify runAsNonRoot for a numeric USER,
# and the Helm chart runs as 10001:10001.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-log-init \
       --home-dir /nonexistent --shell /usr/sbin/nologin app
# Owned by root and read-only for the app user.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1
WORKDIR /tmp
USER 10001:10001
# /metrics, /healthz (poll loop alive), /readyz (assigned and restored).
EXPOSE 9000
# SIGTERM drains: stop fetching, finish in-flight calls, commit, leave the group.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/healthz', timeout=3)"]
# Exec form: the service is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["imconnector-consumer"]
CMD ["run"]
