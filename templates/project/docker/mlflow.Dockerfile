# syntax=docker/dockerfile:1
# The MLflow tracking server: PostgreSQL backend, artifacts proxied to S3 (MinIO), basic-auth login.
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MLFLOW_ENABLE_TELEMETRY=false
COPY mlflow-requirements.lock /tmp/
RUN pip install --no-cache-dir --require-hashes -r /tmp/mlflow-requirements.lock \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /var/lib/mlflow-auth && chown 1000:1000 /var/lib/mlflow-auth
COPY mlflow-auth.ini /etc/mlflow/basic_auth.ini
USER 1000:1000
EXPOSE 5000
