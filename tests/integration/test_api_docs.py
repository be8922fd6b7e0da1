"""Swagger UI at /api/docs, from the API's own OpenAPI document and with its files served locally."""

from __future__ import annotations

import re

import pytest


def test_docs_page_loads_the_openapi_document_and_local_assets(client):
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "/api/openapi.json" in page
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(source.startswith("/api/docs/assets/") for source in sources), sources
    # The page runs Swagger UI from an inline script, which the API's default policy forbids.
    assert "script-src 'self' 'unsafe-inline'" in response.headers["Content-Security-Policy"]
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert asset.content_length and asset.content_length > 1000


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2F__init__.py", "nothing.js"])
def test_only_the_pages_files_are_served(client, name):
    assert client.get(f"/api/docs/assets/{name}").status_code == 404


def test_other_responses_keep_the_strict_policy(client):
    assert client.get("/api/openapi.json").headers["Content-Security-Policy"].startswith("default-src 'none'")
