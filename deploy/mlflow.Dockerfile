# MLflow tracking server on PostgreSQL with artifacts in S3-compatible storage (MinIO).
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary" "boto3"
EXPOSE 5000
