"""Files and fine-tuning jobs routes: the same paths, fields and statuses as the hosted API."""

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from . import jobs
from .errors import APIError


def _call(fn, *args):
    try:
        return fn(*args)
    except jobs.NotFound as exc:
        raise APIError(404, str(exc), code="not_found") from None
    except jobs.BadRequest as exc:
        raise APIError(400, str(exc), code="invalid_request", param=exc.param) from None


def router(max_upload_bytes: int, dependencies) -> APIRouter:
    r = APIRouter(prefix="/v1", dependencies=dependencies)

    @r.post("/files")
    async def upload(request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_upload_bytes + 1_000_000:  # multipart framing aside, refuse before reading
            raise APIError(413, f"upload larger than the server's limit of {max_upload_bytes} bytes", param="file")
        if purpose not in ("fine-tune", "assistants", "batch", "user_data", "evals"):
            raise APIError(400, f"purpose {purpose!r} is not supported", param="purpose")
        try:
            return jobs.save_file(file.filename, purpose, file.file, max_upload_bytes)
        except jobs.BadRequest as exc:
            raise APIError(413, str(exc), param=exc.param) from None

    @r.get("/files")
    async def list_files(purpose: str | None = None):
        return {"object": "list", "data": _call(jobs.list_files, purpose), "has_more": False}

    @r.get("/files/{file_id}")
    async def get_file(file_id: str):
        return jobs.file_object(_call(jobs.get_file_row, file_id))

    @r.delete("/files/{file_id}")
    async def delete_file(file_id: str):
        return _call(jobs.delete_file, file_id)

    @r.get("/files/{file_id}/content")
    async def file_content(file_id: str):
        row = _call(jobs.get_file_row, file_id)
        return FileResponse(row["path"], filename=row["filename"], media_type="application/octet-stream")

    @r.post("/fine_tuning/jobs")
    async def create_job(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return _call(jobs.create_job, body)

    @r.get("/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20):
        return _call(jobs.list_jobs, after, max(1, min(limit, 100)))

    @r.get("/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str):
        return _call(jobs.get_job, job_id)

    for action in ("cancel", "pause", "resume"):
        def make(action=action):
            async def handler(job_id: str):
                return _call(jobs.control, job_id, action)
            return handler
        r.add_api_route(f"/fine_tuning/jobs/{{job_id}}/{action}", make(), methods=["POST"])

    @r.get("/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, after: str | None = None, limit: int = 20):
        return _call(jobs.list_events, job_id, after, max(1, min(limit, 1000)))

    @r.get("/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, after: str | None = None, limit: int = 10):
        return _call(jobs.list_checkpoints, job_id, after, max(1, min(limit, 100)))

    return r
