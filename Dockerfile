# NAT billing webhook service: one instance behind a load balancer.
# Migrations run as a release step (`webhook-service db upgrade`), never in the web process.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
# The locked dependencies, each checked against its hash (a layer of its own: it changes
# only when requirements.lock does). Then the service itself, without dependencies.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY webhook_service ./webhook_service
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin nat \
    && mkdir -p /app/var \
    && chown nat /app/var

USER nat
EXPOSE 8080
# SQLite (the default DATABASE_URL, sqlite:///var/webhook-service.db) lives here: mount a
# volume on it, or set DATABASE_URL to PostgreSQL.
VOLUME ["/app/var"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8080\")}/healthz', timeout=2)" || exit 1

# The Procfile's web command.
CMD ["webhook-service", "serve"]
