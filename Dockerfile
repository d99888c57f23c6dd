# The proxy and the scorer, built with uv from the lock file.
# Without the `embedded` extra: no chdb, pyarrow or pandas in the image; the ledger is a ClickHouse
# server (`--clickhouse-url http://…`). A `chdb://` URL then stops the program with one clear line.
FROM python:3.11-slim AS base
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app

# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project

COPY setup.py ./
COPY protocol ./protocol
COPY ledger ./ledger
COPY proxy ./proxy
COPY scorer ./scorer
COPY simulation ./simulation
# The project itself, with protocol/_sha256d.c compiled (the share check's hashing); the compiler and the
# headers go again in the same layer. Without them the build would skip the extension and hash in Python.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && uv sync --locked --no-dev \
    && apt-get purge -y --auto-remove gcc libc6-dev libssl-dev && rm -rf /var/lib/apt/lists/* \
    && .venv/bin/python -c "import protocol._sha256d"

ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 ih && mkdir -p /data && chown ih /data
USER ih
VOLUME ["/data"]
EXPOSE 3333 9464
# The proxy's HTTP endpoint (IH_METRICS, port 9464) answers /healthz while the process is alive.
# The scorer service overrides this in docker-compose.yml.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status != 200)"]
# SIGTERM drains sessions and flushes the ledger; give it time (see stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ih-proxy"]
CMD ["--data-dir", "/data"]
