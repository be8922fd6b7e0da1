"""`python -m api`: serve the API on CLARA_API_HOST:CLARA_API_PORT (use gunicorn in production)."""

from __future__ import annotations

import logging

from api import create_app

logger = logging.getLogger("api")


def main() -> None:
    """Serve the API with Werkzeug's threaded server."""
    app = create_app()
    settings = app.extensions["clara_settings"]
    if settings.is_production:
        logger.warning("Serving with the development server in production; use gunicorn instead.")
    logger.info("Clara API listening on http://%s:%s", settings.api_host, settings.api_port)
    app.run(host=settings.api_host, port=settings.api_port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
