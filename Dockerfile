# fanflow worker / Flower image.
#
#   docker build -t fanflow:local .
#   docker run --rm -e FANFLOW_BROKER_URL=redis://:PASSWORD@redis:6379/0 fanflow:local
#
# One image serves every role; docker-compose.yml and deploy/ only change the command
# (which queue, which pool, or Flower).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1: reaps the zombies that agent CLI subprocesses can leave behind and forwards
# SIGTERM to celery only (not to the whole process group), so the worker's warm shutdown can let
# running agent subprocesses finish instead of having them killed under it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so Kubernetes `runAsNonRoot` can verify it, and Celery never runs as
# root (C_FORCE_ROOT must stay unset). The home directory is where agent CLIs keep their config.
RUN groupadd --system --gid 10001 fanflow \
    && useradd --system --uid 10001 --gid fanflow --home-dir /home/fanflow --create-home \
       --shell /usr/sbin/nologin fanflow

# Only what the build needs (see .dockerignore), so a local .env or secrets never reach the image.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fanflow/ ./fanflow/
COPY workers/ ./workers/
# The `flower` extra puts Flower in the same image, so it imports the same `workers` app.
# The source tree is removed afterwards: everything runs from site-packages.
RUN pip install "/src[flower]" \
    && rm -rf /src

USER 10001:10001
WORKDIR /home/fanflow

ENTRYPOINT ["/usr/bin/tini", "--"]
# Default: one worker consuming every queue (handy for a single-container trial). Real deployments
# run one worker per queue with the pool that suits it; see docker-compose.yml and deploy/.
CMD ["celery", "-A", "workers", "worker", \
     "-Q", "fanflow.llm,fanflow.agent,fanflow.py,fanflow.control", \
     "-P", "threads", "-c", "16", "--loglevel", "INFO"]
