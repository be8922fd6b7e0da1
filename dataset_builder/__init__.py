"""Building training datasets from document stores or uploads; knows nothing of Flask or Celery."""

BUILDER_VERSION = "1.0.0"
