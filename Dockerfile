# The clock in a container: `docker build -t myapp-clock .` in an app that has schedules.yaml at its root.
# This file builds the clock from this repository; in your app, replace the `COPY . /src` and the
# `pip install /src` lines with `pip install scheduler-clock` (or `scheduler-clock[postgres]`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
RUN pip install '/src[postgres]' && rm -rf /src

# Tasks run as this user, never as root.
RUN useradd --create-home --uid 10001 clock
USER clock
WORKDIR /home/clock/app
COPY --chown=clock:clock schedules.example.yaml ./schedules.yaml

# /healthz answers 200 while the loop turns and 503 once it has been stuck for a while.
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]

# The clock can be PID 1: it handles SIGTERM itself (docker stop's 10 s: see --shutdown-grace) and reaps
# orphaned zombies. Use `docker run --init` only if your tasks start daemons of their own.
STOPSIGNAL SIGTERM
CMD ["scheduler", "run", "--log-format", "json", "--metrics-addr", "0.0.0.0:9464", "--shutdown-grace", "8s"]
