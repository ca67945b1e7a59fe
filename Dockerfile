# The proxy as a container image (Compose, Coolify, CapRover, Kubernetes, Fly.io):
#   docker build -t pingforward . && docker run -p 8080:8080 pingforward
# It runs the Procfile's command (tests/test_container.py keeps the two identical).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
COPY pingforward pingforward
# The exact pins first, then the project itself without dependencies, for the `pingforward` command
# (`docker run --rm pingforward pingforward check https://your.site/a-post`).
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements.txt && pip install --no-cache-dir --disable-pip-version-check --no-deps .
# A numeric user that owns nothing in the image: Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The platform's PORT wins; uvicorn reads WEB_CONCURRENCY (worker processes, default 1).
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4)"
# exec: the server (uvicorn, under pingforward's supervisor), not the shell, receives SIGTERM: it stops listening
# and finishes the pings in flight.
CMD exec python -m pingforward.supervisor --factory pingforward.app:create_app --loop uvloop --http pingforward.server:HttpToolsProtocol --no-proxy-headers --timeout-graceful-shutdown 20 --no-access-log --host 0.0.0.0 --port $PORT
