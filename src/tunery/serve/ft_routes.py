"""Files and fine-tuning jobs routes: the same paths, fields and statuses as the hosted API.
The errors jobs.py raises reach the client through errors.HTTP_ERRORS."""

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from . import jobs
from .errors import APIError


def router(max_upload_bytes: int, dependencies) -> APIRouter:
    r = APIRouter(prefix="/v1", dependencies=dependencies)

    @r.post("/files")
    async def upload(request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_upload_bytes + 1_000_000:  # multipart framing aside, refuse before reading
            raise APIError(413, f"upload larger than the server's limit of {max_upload_bytes} bytes", param="file")
        if purpose not in ("fine-tune", "assistants", "batch", "user_data", "evals"):
            raise APIError(400, f"purpose {purpose!r} is not supported", param="purpose")
        return jobs.save_file(file.filename, purpose, file.file, max_upload_bytes)

    @r.get("/files")
    async def list_files(purpose: str | None = None):
        return {"object": "list", "data": jobs.list_files(purpose), "has_more": False}

    @r.get("/files/{file_id}")
    async def get_file(file_id: str):
        return jobs.file_object(jobs.get_file_row(file_id))

    @r.delete("/files/{file_id}")
    async def delete_file(file_id: str):
        return jobs.delete_file(file_id)

    @r.get("/files/{file_id}/content")
    async def file_content(file_id: str):
        row = jobs.get_file_row(file_id)
        return FileResponse(row["path"], filename=row["filename"], media_type="application/octet-stream")

    @r.post("/fine_tuning/jobs")
    async def create_job(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return jobs.create_job(body)

    @r.get("/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20):
        return jobs.list_jobs(after, max(1, min(limit, 100)))

    @r.get("/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str):
        return jobs.get_job(job_id)

    for action in ("cancel", "pause", "resume"):
        def make(action=action):
            async def handler(job_id: str):
                return jobs.control(job_id, action)
            return handler
        r.add_api_route(f"/fine_tuning/jobs/{{job_id}}/{action}", make(), methods=["POST"])

    @r.get("/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, after: str | None = None, limit: int = 20):
        return jobs.list_events(job_id, after, max(1, min(limit, 1000)))

    @r.get("/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, after: str | None = None, limit: int = 10):
        return jobs.list_checkpoints(job_id, after, max(1, min(limit, 100)))

    return r
