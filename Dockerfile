# syntax=docker/dockerfile:1
#
# The container image of a cmworker compute module for Palantir Foundry, serving examples/routes:
# built as `cmworker init`'s Dockerfile builds a project's, with cmworker's wheel made in a first stage.
# Build and push (see docs/deploying.md):
#
#   docker build --platform linux/amd64 -t <registry>/<repository>:0.1.0 .
#
# Foundry's rules: linux/amd64, a numeric non-root user, a tag other than `latest`, /bin/sh present
# (the slim Debian base has it). No port is exposed: cmworker calls the runtime, nothing calls it.

# Python 3.12.13 on Debian 13 (trixie), pinned by tag and by the digest of that tag's multi-platform
# index as published on 2026-08-05 (its linux/amd64 image is
# sha256:d657ab0ade19f404a6ccc883ab399540de667aff751748ce23c07330c5a89e64). To move to a newer base,
# change both: `docker buildx imagetools inspect python:<tag>` prints a tag's digest.
ARG PYTHON_IMAGE=python:3.12.13-slim-trixie@sha256:229a2c5bfa27522db7815ea81f9bed70af17ccb9de9fc7ad142b1877b5830d36

# -- build: a wheel of cmworker from this source tree (what `python -m build --wheel` makes) ---------
FROM --platform=linux/amd64 ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY cmworker ./cmworker
RUN pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: what `cmworker init`'s Dockerfile does, with the wheel from the stage above ----------
FROM --platform=linux/amd64 ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# cmworker from its wheel (no test or dev extras), and the app's own requirements.
COPY --from=build /wheels /tmp/wheels/
COPY examples/routes/requirements.txt /tmp/requirements.txt
RUN pip install /tmp/wheels/cmworker-*.whl -r /tmp/requirements.txt && rm -rf /tmp/wheels /tmp/requirements.txt
WORKDIR /app
# The app and its configuration. To ship another app of this tree, copy its files here instead.
COPY examples/routes/app.py examples/routes/routing.py examples/routes/cmworker.toml ./
# Any uid works; Foundry needs it numeric. Files stay root-owned and read-only for it.
USER 5000:5000
# No init wrapper (tini, dumb-init): `cmworker run` is safe as PID 1. It handles SIGTERM itself
# (drains running jobs, then exits 0) and reaps every orphan: its worker template is a child
# subreaper, and the parent reaps whatever is re-parented to it when it runs as PID 1.
ENTRYPOINT ["cmworker", "run"]
