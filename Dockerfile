# The wallet service. Without WALLET_DATABASE_URL it would start an embedded PostgreSQL in WALLET_DATA_DIR;
# docker-compose.yml points it at a postgres:15 container instead.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 wallet
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 WALLET_DATA_DIR=/home/wallet/data
USER wallet
WORKDIR /home/wallet
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["wallet", "serve", "--host", "0.0.0.0"]
