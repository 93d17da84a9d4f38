FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
RUN pip install --no-cache-dir . && useradd --create-home flashpro
COPY policies ./policies

USER flashpro
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["flashpro", "serve", "--host", "0.0.0.0", "--port", "8000", "--policy", "/app/policies/default.yaml"]
