# The lamina image: operator, gateway and event-source workers, one image (`lamina <subcommand>`).
#   docker build -t ghcr.io/lamina-dev/lamina:0.1.0 .
# BASE is the image the program runs on; BUILDER_BASE the one the wheels are built on (it needs pip and
# venv; python:3.x-slim has both). Without a registry, scripts/build-images --bases=local makes both from
# Debian packages.
ARG PYTHON_VERSION=3.12
ARG BASE=python:${PYTHON_VERSION}-slim
ARG BUILDER_BASE=${BASE}

FROM ${BUILDER_BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a source change does not fetch them again.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && python -m pip wheel --wheel-dir /wheels -r requirements.txt
COPY README.md ./
COPY operator operator
COPY runtime-image/lamina_runtime runtime-image/lamina_runtime
# The same interpreter path in both stages, so the venv copied below runs as built.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/lamina \
    && python -m pip --python /opt/lamina/bin/python install --no-index --find-links /wheels --no-compile lamina \
    # kubernetes>=35 also ships an asyncio copy of its client (kubernetes.aio, ~70 MB) that lamina never imports.
    && rm -rf /opt/lamina/lib/python3*/site-packages/kubernetes/aio \
    && /opt/lamina/bin/python -m compileall -q -j 0 /opt/lamina/lib \
    && /opt/lamina/bin/python -c 'import lamina.cli, lamina.reconcilers.main, lamina.cluster.gateway, kopf, kubernetes.client' \
    && /opt/lamina/bin/lamina --help > /dev/null

FROM ${BASE}
ENV PATH=/opt/lamina/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
COPY --from=builder /opt/lamina /opt/lamina
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp lamina \
    && lamina --help > /dev/null
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["lamina"]
CMD ["--help"]
