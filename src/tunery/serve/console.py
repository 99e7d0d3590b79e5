"""The console: web pages for data, jobs, models, compare and a playground, served at `/` by the
same app as the API.

Pages are server-rendered shells (Jinja templates in console_assets/, autoescaped) whose content the
page's script fetches from the public API (/v1/... and /v1/tunery/...): the console has no other
way in, so every click is also a use of the API a client has. Scripts and styles are tunery's
own files (console_assets/console.js, console.css), served from this package; nothing comes
from a CDN. Charts are drawn as SVG by console.js (the report's chart code, ported): a few
hundred points need no library, and no third-party script runs in a page that holds a session.

Sessions: behind an API key, `POST /login` with the key sets an HttpOnly, SameSite=Strict cookie
(Secure over https) holding when it was issued and an HMAC of that with the key (no key in a URL,
none readable by a script; a new key ends every session; a session lives SESSION_SECONDS; a wrong
key is answered after LOGIN_FAILURE_DELAY). `Guard` (app.py) accepts that cookie wherever it accepts the key; with the cookie, a
request that changes anything must also carry the header `X-Tunery-Console: 1`, which a page on
another site cannot send without a CORS preflight this server never grants. Pages are sent with
a Content-Security-Policy allowing only this origin's scripts.
"""

import hashlib
import hmac
import re
import secrets
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

ASSETS = Path(__file__).parent / "console_assets"
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
COOKIE = "tunery_session"
CSRF_HEADER = b"x-tunery-console"
SAFE_METHODS = ("GET", "HEAD")
LOGIN_FAILURE_DELAY = 1.0  # seconds a wrong key waits for its answer
# What a browser may reach without a session: the login page and the files it needs.
PUBLIC = re.compile(r"^/(login|logout|console/static/[a-z.]+|favicon\.ico)$")
PAGES = re.compile(r"^/($|jobs(/|$)|data$|models(/|$)|compare$|playground$)")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY", "referrer-policy": "no-referrer", "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
NAV = [("/", "Jobs"), ("/data", "Data"), ("/models", "Models"), ("/compare", "Compare"), ("/playground", "Playground")]


SESSION_SECONDS = 7 * 24 * 3600  # a session's life: a copied cookie stops working after it


def session_token(api_key: str, issued: int | None = None) -> str:
    """`ISSUED.HMAC`: when the session began, signed with the key (so a new key ends every session)."""
    issued = int(time.time()) if issued is None else issued
    return f"{issued}.{hmac.new(api_key.encode(), f'tunery-console-session-v2:{issued}'.encode(), hashlib.sha256).hexdigest()}"


def session_of(headers: dict, api_key: str) -> bool:
    """Does the request carry a live session cookie for this key?"""
    raw = headers.get(b"cookie", b"").decode("latin-1")
    if not raw:
        return False
    try:
        jar = SimpleCookie(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is no session
        return False
    given = jar[COOKIE].value if COOKIE in jar else ""
    issued = given.split(".", 1)[0]
    if not issued.isdigit() or len(issued) > 12 or not -60 <= time.time() - int(issued) <= SESSION_SECONDS:
        return False
    return secrets.compare_digest(given.encode(), session_token(api_key, int(issued)).encode())


def cross_site_write(method: str, headers: dict) -> bool:
    """A cookie-authenticated request that changes state without the console's header."""
    return method not in SAFE_METHODS and headers.get(CSRF_HEADER) != b"1"


def is_public(path: str) -> bool:
    return bool(PUBLIC.match(path))


def is_page(path: str) -> bool:
    return bool(PAGES.match(path))


def _next(target: str | None) -> str:
    """Where to go after logging in: a path on this site, nothing else."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or not is_page(target.split("?")[0]):
        return "/"
    return target


def router(api_key: str | None) -> APIRouter:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from ..metrics import BUILTIN

    env = Environment(loader=FileSystemLoader(ASSETS), autoescape=select_autoescape(["html"]))
    r = APIRouter(include_in_schema=False)

    def page(name: str, title: str, status: int = 200, **values) -> HTMLResponse:
        body = env.get_template(f"{name}.html").render(
            title=title, nav=NAV, page=name, login=api_key is not None, metrics=sorted(BUILTIN), **values)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    @r.get("/login")
    def login_form(next: str = "/"):
        if api_key is None:
            return RedirectResponse(_next(next), status_code=303)
        return page("login", "Log in", next=_next(next))

    @r.post("/login")
    def login(request: Request, key: str = Form(""), next: str = Form("/")):
        if api_key is None:
            return RedirectResponse(_next(next), status_code=303)
        if not secrets.compare_digest(key.encode(), api_key.encode()):
            time.sleep(LOGIN_FAILURE_DELAY)  # guesses at a human's pace, not a script's
            return page("login", "Log in", status=401, next=_next(next), error="That is not this server's API key.")
        out = RedirectResponse(_next(next), status_code=303)
        out.set_cookie(COOKIE, session_token(api_key), httponly=True, samesite="strict", path="/",
                       max_age=SESSION_SECONDS, secure=request.url.scheme == "https")
        return out

    @r.post("/logout")
    def logout():
        out = RedirectResponse("/login", status_code=303)
        out.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return out

    @r.get("/console/static/{name}")
    def static(name: str):
        if name not in STATIC:
            return Response("not found", status_code=404)
        return FileResponse(ASSETS / name, media_type=STATIC[name], headers={"cache-control": "no-cache"})

    @r.get("/")
    def jobs_page():
        return page("jobs", "Jobs")

    @r.get("/jobs")
    def jobs_alias():
        return RedirectResponse("/", status_code=303)

    @r.get("/jobs/{job_id}")
    def job_page(job_id: str):
        from .jobs import JOB_ID

        if not JOB_ID.match(job_id):
            return page("missing", "Not found", status=404, what=f"no job {job_id}")
        return page("job", job_id, job_id=job_id)

    @r.get("/data")
    def data_page():
        return page("data", "Data")

    @r.get("/models")
    def models_page():
        return page("models", "Models")

    @r.get("/models/{ref:path}")
    def model_page(ref: str):
        return page("model", ref, ref=ref, ref_url=quote(ref, safe=""))

    @r.get("/compare")
    def compare_page():
        return page("compare", "Compare")

    @r.get("/playground")
    def playground_page(model: str = ""):
        return page("playground", "Playground", model=model)

    return r


def login_redirect(path: str, query: str) -> str:
    target = path + (f"?{query}" if query else "")
    return "/login?next=" + quote(_next(target), safe="")
