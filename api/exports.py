"""``GET /v1/exports/{id}``: the export bundle behind a signed, short-lived link.

The link (made by the ``dsr.export_link`` activity and sent to the subject) is its own
credential: the signature covers the request id and the expiry. No bearer token is asked,
and nothing tells a wrong signature from an unknown request: both are 404.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from activities.export_store import LocalExportStore, S3ExportStore, export_store_from
from api.common import SETTINGS
from api.problems import Problem
from workers.links import check_export_link

PREFIX = "/v1/exports/"


async def download_export(request: web.Request) -> web.StreamResponse:
    """Stream the bundle (local store) or redirect to a presigned URL (S3) while the link is valid."""
    settings = request.app[SETTINGS]
    request_id = request.match_info["id"]
    why = check_export_link(settings, request_id, request.query.get("expires", ""),
                            request.query.get("signature", ""), datetime.now(UTC))
    if why == "the link has expired":
        raise Problem(410, "this download link has expired; ask for a new one", slug="link-expired", title="Gone")
    if why is not None:
        raise Problem(404, "no such export", slug="not-found", title="Not Found")
    store = export_store_from(settings)
    key = f"{request_id}/bundle.zip"
    if isinstance(store, S3ExportStore):
        url = await asyncio.to_thread(store.presigned_url, key, 300)
        raise web.HTTPFound(url)
    assert isinstance(store, LocalExportStore)
    try:
        path = store.path_of(key)
    except ValueError:
        raise Problem(404, "no such export", slug="not-found", title="Not Found") from None
    if not path.is_file():
        raise Problem(404, "no such export", slug="not-found", title="Not Found")
    return web.FileResponse(path, headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="{request_id}.zip"',
        "Cache-Control": "no-store",
    })
