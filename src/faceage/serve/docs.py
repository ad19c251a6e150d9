"""/docs and /redoc served from this server's own files, and the pages' content policy."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

# Swagger UI and ReDoc for /docs and /redoc, served by this server (FastAPI's defaults load
# them from a CDN, and the pages stay blank offline). The files come from the fastapi-offline
# wheel (MIT; Swagger UI under Apache-2.0, ReDoc under MIT), pinned in pyproject.toml, so an
# upgrade is a version bump rather than re-vendoring 2.8 MB of minified JavaScript.
DOCS_ASSETS = Path(str(resources.files("fastapi_offline") / "static"))
DOCS_ASSETS_URL = "/docs/static"
# The HTML pages may load and contact this server only. It also keeps ReDoc from fetching its
# "API docs by Redocly" logo from cdn.redoc.ly (hard-coded in its bundle; it hides itself when
# the image fails). The docs pages need inline script/styles (FastAPI's HTML, styled-components)
# and ReDoc's search runs in a blob: worker; the page needs blob: for the photos' previews.
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'")
CSP_PAGE = "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'"


def with_csp(policy: str, response):
    response.headers["Content-Security-Policy"] = policy
    return response


def add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from files served here: no request leaves this server."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS_URL}/{name}"   # works behind a proxy prefix

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request):
        return with_csp(CSP_DOCS, get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}", title=f"{app.title} - API docs",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"), swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"), oauth2_redirect_url=None,
            # Swagger UI would otherwise offer to send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None}))

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request):
        return with_csp(CSP_DOCS, get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}", title=f"{app.title} - API reference",
            redoc_js_url=asset(request, "redoc.standalone.js"), redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False))
