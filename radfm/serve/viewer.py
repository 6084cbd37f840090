"""``/viewer``: a NiiVue page for interactive segmentation over the session API.

Why in the core: the page is a client of ``/v1/sessions`` (upload, click, mask back, export) and
holds no task code. NiiVue (``@niivue/niivue``, BSD-2-Clause) is fetched from npm at install time
by ``scripts/setup_viewer.sh`` into ``radfm/serve/static/niivue.umd.js`` (or ``$RADFM_NIIVUE_JS``);
without it ``/viewer/niivue.umd.js`` answers 503 naming the script.

The page and its script are the only paths served without the API key (:data:`PUBLIC_PATHS`):
they are static and carry no data; the key is typed into the page and sent with every API call.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from radfm.errors import ConfigError

__all__ = ["NIIVUE_ENV", "PUBLIC_PATHS", "niivue_js_path", "viewer_router"]

STATIC = Path(__file__).resolve().parent / "static"
NIIVUE_ENV = "RADFM_NIIVUE_JS"
PUBLIC_PATHS = frozenset({"/viewer", "/viewer/niivue.umd.js"})


def niivue_js_path() -> Path:
    """The NiiVue UMD bundle served to the page: ``$RADFM_NIIVUE_JS`` or the one the setup script put here."""
    return Path(os.environ.get(NIIVUE_ENV) or STATIC / "niivue.umd.js")


def viewer_router() -> APIRouter:
    """``GET /viewer`` (the page) and ``GET /viewer/niivue.umd.js`` (the viewer library)."""
    router = APIRouter(tags=["viewer"])

    @router.get("/viewer", response_class=HTMLResponse, include_in_schema=False)
    def viewer_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "viewer.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    @router.get("/viewer/niivue.umd.js", include_in_schema=False)
    def niivue_js() -> FileResponse:
        path = niivue_js_path()
        if not path.is_file():
            err = ConfigError("the web viewer's NiiVue library is not installed on this server.",
                              "Run: bash scripts/setup_viewer.sh (npm @niivue/niivue), or set RADFM_NIIVUE_JS.")
            err.http_status = 503  # type: ignore[attr-defined]
            raise err
        return FileResponse(path, media_type="text/javascript")

    return router
