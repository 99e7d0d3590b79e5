"""Files and fine-tuning jobs routes: the same paths, fields and statuses as the hosted API.
The errors jobs.py raises reach the client through errors.HTTP_ERRORS. Handlers that touch the
database or disk are plain functions, which FastAPI runs in its thread pool, off the event loop.
(The API key and an upload's size are checked before this, by app.Guard.)"""

import asyncio

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from . import jobs
from .catalog import Catalog
from .errors import APIError


def router(max_upload_bytes: int, catalog: Catalog) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/files")
    def upload(file: UploadFile = File(...), purpose: str = Form(...)):
        if purpose not in ("fine-tune", "assistants", "batch", "user_data", "evals"):
            raise APIError(400, f"purpose {purpose!r} is not supported", param="purpose")
        return jobs.save_file(file.filename, purpose, file.file, max_upload_bytes)

    @r.get("/files")
    def list_files(purpose: str | None = None):
        return {"object": "list", "data": jobs.list_files(purpose), "has_more": False}

    @r.get("/files/{file_id}")
    def get_file(file_id: str):
        return jobs.file_object(jobs.get_file_row(file_id))

    @r.delete("/files/{file_id}")
    def delete_file(file_id: str):
        return jobs.delete_file(file_id)

    @r.get("/files/{file_id}/content")
    def file_content(file_id: str):
        row = jobs.get_file_row(file_id)
        return FileResponse(row["path"], filename=row["filename"], media_type="application/octet-stream")

    @r.post("/fine_tuning/jobs")
    async def create_job(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise APIError(415, "the request body must be JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
            raise APIError(400, "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return await asyncio.to_thread(jobs.create_job, body, catalog)

    @r.get("/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int = 20):
        return jobs.list_jobs(after, max(1, min(limit, 100)))

    @r.get("/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str):
        return jobs.get_job(job_id)

    for action in ("cancel", "pause", "resume"):
        def make(action=action):
            def handler(job_id: str):
                return jobs.control(job_id, action)
            return handler
        r.add_api_route(f"/fine_tuning/jobs/{{job_id}}/{action}", make(), methods=["POST"])

    @r.get("/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, after: str | None = None, limit: int = 20):
        return jobs.list_events(job_id, after, max(1, min(limit, 1000)))

    @r.get("/fine_tuning/jobs/{job_id}/checkpoints")
    def checkpoints(job_id: str, after: str | None = None, limit: int = 10):
        return jobs.list_checkpoints(job_id, after, max(1, min(limit, 100)))

    return r
