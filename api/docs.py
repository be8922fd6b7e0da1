"""Swagger UI at /api/docs, its scripts and styles served from the swagger-ui-bundle package, never a CDN."""

from __future__ import annotations

from flask import Blueprint, Response, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from api.errors import ApiError

blp = Blueprint("docs_assets", __name__)

DOCS_PATH = "/api/docs"
ASSETS_URL = DOCS_PATH + "/assets/"
# The files flask-smorest's page loads, and the favicons; nothing else of the package is served.
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                    "favicon-16x16.png", "favicon-32x32.png"})
# The page starts Swagger UI from an inline script and Swagger UI sets inline styles and data: images;
# everything else still comes only from this origin.
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; frame-ancestors 'none'")


@blp.route(ASSETS_URL + "<string:filename>", methods=["GET"])
def asset(filename: str) -> Response:
    """One of Swagger UI's static files."""
    if filename not in ASSETS:
        raise ApiError(404, f"No documentation asset {filename}.", "not_found")
    return send_from_directory(swagger_ui_path, filename, max_age=86400)


@blp.after_app_request
def _docs_policy(response: Response) -> Response:
    """Loosen the API's default-src 'none' policy for the documentation page only, which must run scripts."""
    if request.path == DOCS_PATH or request.path.startswith(ASSETS_URL):
        response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response
