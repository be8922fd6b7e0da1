"""The API process never loads the training or store libraries, whatever route it answers.

Each gunicorn worker would pay for them in memory (torch, transformers and chromadb's embedding stack
took the API from about 70 MB to 600 MB on its first build request), and the API needs none of them:
requests are checked with light modules, and the workers train, connect to the stores and build.

A fresh interpreter builds the app with this test's settings and answers every route of the OpenAPI
document (the requests of the authorisation matrix, as an admin) plus build requests naming every
source type and quality stage, then reports which of the forbidden modules it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import PASSWORD
from tests.integration.test_authorization_matrix import MATRIX, World, _path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "chromadb", "sentence_transformers",
             "neo4j", "lingua", "datasketch")
"""matplotlib is not here: GET .../loss.png draws with it, imported inside that route alone."""
PROBE_TIMEOUT = 300
# (method, path, JSON body, expected status): requests past the matrix's one per route.
EXTRA_REQUESTS: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/api/datasets", {
        "name": "every-source",
        "sources": [{"type": "postgres", "query": "Ausweis", "language": "german", "limit": 10},
                    {"type": "chroma", "collection": "documents", "query_text": "Ausweis", "top_k": 5,
                     "where": {"law": "PAuswG", "year": {"$gte": 2000}}},
                    {"type": "neo4j", "label": "Document", "properties": {"law": "BDSG"}, "limit": 10},
                    {"type": "neo4j", "seed_ids": ["bdsg#3"], "relationships": ["CITES"], "depth": 2}],
        "quality": {"min_chars": 20, "languages": ["de", "en"], "dedup": "near", "redact_pii": True},
        "format": {"kind": "instruction", "mapping": {"instruction": "{title}", "output": "{content}"}},
        "split": {"validation_fraction": 0.2, "seed": 7},
        "export_formats": ["jsonl", "parquet", "csv"]}, 202),
    # The upload is only queued, not stored: refused, after its dataset row was looked up.
    ("POST", "/api/datasets", {"name": "from-upload", "sources": [{"type": "upload", "dataset_id": "nope"}]}, 422),
    ("GET", "/metrics", None, 200),
    ("GET", "/api/openapi.json", None, 200),
]


def probe(settings: dict[str, Any]) -> dict[str, list[str]]:
    """Answer every documented route and the extra requests; return failures and the forbidden modules loaded."""
    from api import create_app

    app = create_app(settings)
    world = World(app)
    client = app.test_client()
    failures = []
    headers = {"Authorization": f"Bearer {world.tokens('admin')['access_token']}"}
    for method, path, body, status in EXTRA_REQUESTS:
        response = client.open(path, method=method, headers=headers, json=body)
        if response.status_code != status:
            failures.append(f"{method} {path}: {response.status_code}, expected {status} "
                            f"({(response.get_json(silent=True) or {}).get('error')})")
    document = client.get("/api/openapi.json").get_json()
    routes = sorted((method.upper(), path) for path, operations in document["paths"].items()
                    for method in operations if method != "parameters")
    # A password change ends the admin's sessions, so it goes last.
    routes.sort(key=lambda route: route == ("POST", "/api/auth/password"))
    for method, template in routes:
        kind, body, expected = MATRIX[(method, template)]
        whose = "other" if kind else "own"
        status = expected["admin"][whose] if isinstance(expected["admin"], dict) else expected["admin"]
        object_id = world.make(kind, "other") if kind else None
        tokens = world.tokens("admin")
        token = tokens["refresh_token"] if template == "/api/auth/refresh" else tokens["access_token"]
        kwargs = body("admin") if body else {}
        if template == "/api/auth/login":
            kwargs = {"json": {"username": world.users["admin"]["username"], "password": PASSWORD}}
        response = client.open(_path(template, kind, object_id), method=method,
                               headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if response.status_code != status:
            failures.append(f"{method} {template}: {response.status_code}, expected {status}")
    app.extensions["clara_db"].reset()
    return {"failures": failures, "forbidden": sorted(set(FORBIDDEN) & set(sys.modules))}


def test_the_api_imports_no_training_or_store_library(settings_overrides):
    settings = {name: str(value) if isinstance(value, Path) else value for name, value in settings_overrides.items()}
    # The graph is never reached by the API, so an address nothing listens on is enough to accept neo4j sources.
    settings["neo4j_uri"] = "bolt://127.0.0.1:9"
    script = ("import json, sys\n"
              "from tests.integration.test_api_imports import probe\n"
              "print(json.dumps(probe(json.loads(sys.argv[1]))))\n")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(settings)], cwd=REPO, capture_output=True,
                            text=True, timeout=PROBE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == [], f"the API imported {report['forbidden']}"
    assert report["failures"] == [], report["failures"]
