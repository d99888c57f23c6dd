# The proxy and the scorer, built with uv from the lock file.
FROM python:3.11-slim AS base
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app

# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project

COPY protocol ./protocol
COPY ledger ./ledger
COPY proxy ./proxy
COPY scorer ./scorer
COPY simulation ./simulation
RUN uv sync --locked --no-dev

ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 ih && mkdir -p /data && chown ih /data
USER ih
VOLUME ["/data"]
EXPOSE 3333 9464
# SIGTERM drains sessions and flushes the ledger; give it time (see stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ih-proxy"]
CMD ["--data-dir", "/data"]
