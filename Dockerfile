# Clara's image: the API (default command) and the Celery workers and Flower (docker-compose.yml
# overrides the command) all run from it.
#
#   docker build -t clara:latest .
#
# On Linux x86_64, torch==2.13.0 from PyPI is the CUDA build; the NVIDIA driver comes from the host
# (NVIDIA Container Toolkit), so the base image needs no CUDA of its own.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLARA_ENV=production \
    CLARA_API_HOST=0.0.0.0 \
    CLARA_API_PORT=45680 \
    CLARA_DATA_DIR=/srv/clara/data \
    CLARA_MODELS_DIR=/srv/clara/models \
    CLARA_OUTPUT_DIR=/srv/clara/outputs \
    CLARA_CHECKPOINTS_DIR=/srv/clara/checkpoints \
    CLARA_CACHE_DIR=/srv/clara/cache/clara \
    HF_HOME=/srv/clara/cache/huggingface

# A fixed UID/GID, so that files on shared storage (NFS and the like) belong to the same user on every host.
ARG CLARA_UID=10001
RUN groupadd --system --gid "${CLARA_UID}" clara \
 && useradd --system --uid "${CLARA_UID}" --gid clara --home-dir /home/clara --create-home \
        --shell /usr/sbin/nologin clara \
 && mkdir -p /srv/clara/data /srv/clara/models /srv/clara/outputs /srv/clara/checkpoints \
        /srv/clara/cache/huggingface /srv/clara/cache/clara \
 && chown -R clara:clara /srv/clara

WORKDIR /app

# Dependencies first, so that code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The application code stays owned by root: the clara user can read it but not change it.
COPY api/ ./api/
COPY auth/ ./auth/
COPY records/ ./records/
COPY tasks/ ./tasks/
COPY trainers/ ./trainers/
COPY dataset_builder/ ./dataset_builder/
COPY cli/ ./cli/
COPY settings.py celeryconfig.py structured_logs.py ./
ENV PYTHONPATH=/app

USER clara

EXPOSE 45680

# Refuse to start while any setting still holds a CHANGE-ME placeholder from .env.example (a published
# placeholder is no secret), then run the command.
ENTRYPOINT ["/bin/sh", "-c", "placeholders=$(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*CHANGE-ME.*/\\1/p' | tr '\\n' ' '); if [ -n \"$placeholders\" ]; then echo \"clara: these settings still hold a CHANGE-ME placeholder from .env.example: $placeholders- generate secrets with: python -c 'import secrets; print(secrets.token_urlsafe(48))'\" >&2; exit 78; fi; exec \"$@\"", "clara-entrypoint"]

CMD ["gunicorn", "--bind", "0.0.0.0:45680", "--workers", "2", "--threads", "4", "--timeout", "120", "api:create_app()"]
