# syntax=docker/dockerfile:1
# The model puller: `python -m serving pull ...` on a slim Python image. It holds the
# commandline and contract packages and serving/ only (no trainer/, no TensorFlow); the client commands need
# the project's full environment.
#   docker build -f serving/puller.Dockerfile -t vgg16-transfer/puller:0.1.0 .
# Only the puller's own dependencies are installed (requirements/puller.lock, hashed: boto3,
# click, tqdm, model-signing); it imports nothing from TensorFlow.
ARG PYTHON_VERSION=3.11.14

FROM python:${PYTHON_VERSION}-slim-bookworm

ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements/puller.lock requirements/puller.lock
RUN pip install --no-deps --require-hashes -r requirements/puller.lock

COPY pyproject.toml README.md ./
COPY commandline/ commandline/
COPY contract/ contract/
COPY serving/ serving/
# /models is created owned by the puller so an empty Docker volume mounted there starts
# writable for it.
RUN pip install --no-deps --no-build-isolation . \
    && useradd --uid "${UID}" --no-create-home --home-dir /tmp --shell /usr/sbin/nologin puller \
    && mkdir /models && chown "${UID}:${UID}" /models

USER ${UID}:${UID}
ENTRYPOINT ["python", "-m", "serving"]
CMD ["pull", "--help"]
