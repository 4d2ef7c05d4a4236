"""The API docs page (Swagger UI) served from the package's own assets, under a strict
Content-Security-Policy.

FastAPI's default page loads Swagger UI from a CDN, so it is blank on a machine without
internet, and it runs whatever that CDN serves with the page's origin (the one that holds a
member's token once they click "Authorize"). Here the script, stylesheet and icon come from the
`fastapi-offline` wheel (Swagger UI 5, a dependency: installed with bourse, nothing fetched at
run time) through the gateway's own routes, and the page says so to the browser:

- `script-src 'self'` plus the SHA-256 of the page's one inline script (the call that starts
  Swagger UI), computed from the page itself: no `'unsafe-inline'`, no `'unsafe-eval'`;
- `style-src 'self'`, `img-src 'self' data:` (the stylesheet's icons are data: URIs),
  `connect-src 'self'` (the OpenAPI document and "Try it out" requests), nothing else
  (`default-src 'none'`), no framing, no `<base>`, no form posts.

Swagger UI's validator badge is off (`validatorUrl: null`): it would send the document to an
outside service. ReDoc is not served.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse

from bourse.entrypoints.rest.errors import ApiError

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS = {name: ASSETS_DIR / name for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")}
"""The files the page needs, by the name it asks for them (nothing else of the folder is served)."""
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(page: bytes) -> str:
    """The page's policy: its own origin only, plus the hashes of its inline scripts."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' {hashes}".rstrip(),
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def install_docs(app: FastAPI, docs_url: str) -> None:
    """Serve the docs page at `docs_url` and its assets at `docs_url/assets/<name>` (the app is
    made with `docs_url=None`, so FastAPI's CDN page is not there)."""
    assert app.openapi_url is not None
    assets_url = f"{docs_url}/assets"
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} API",
        swagger_js_url=f"{assets_url}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets_url}/swagger-ui.css",
        swagger_favicon_url=f"{assets_url}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    assert isinstance(page, bytes)
    headers = {"content-security-policy": content_security_policy(page)}

    @app.get(docs_url, include_in_schema=False)
    async def docs_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get(f"{assets_url}/{{name}}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        path = ASSETS.get(name)
        if path is None:
            raise ApiError(404, "not_found", f"no docs asset {name!r}")
        return FileResponse(path)
