# seedproxy: slim, non-root, cache on a volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SEEDPROXY_CACHE_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[fast]" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin seedproxy \
    && mkdir -p /data \
    && chown seedproxy /data

USER 10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# Binding beyond loopback: set [auth] tokens (SEEDPROXY_AUTH_TOKENS) for a shared proxy.
CMD ["seedproxy", "serve", "--host", "0.0.0.0"]
