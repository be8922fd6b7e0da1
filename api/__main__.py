"""`python -m api`: serve the API on CLARA_API_HOST:CLARA_API_PORT (use gunicorn in production).

Werkzeug's threaded server serves each client connection on a thread of its own, so 60 clients mean 60
threads sharing CLARA_DATABASE_POOL_SIZE connections; a request waits for a free one up to
CLARA_DATABASE_POOL_TIMEOUT seconds. Under gunicorn each worker process has its own pool, so the pool size
must be at least --threads (the default 8 fits the image's 2 workers x 4 threads).
"""

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
    # Werkzeug starts a thread per connection, without bound; the pool is what bounds the database work.
    logger.info("Each connection gets its own thread; at most %s of them use PostgreSQL at once "
                "(CLARA_DATABASE_POOL_SIZE), the others wait up to %s s (CLARA_DATABASE_POOL_TIMEOUT) and then "
                "answer 503 database_busy.", settings.database_pool_size, settings.database_pool_timeout)
    app.run(host=settings.api_host, port=settings.api_port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
