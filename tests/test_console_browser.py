"""The console in a real browser (Playwright driving Debian's Chromium) against a real server with
its jobs worker: log in, upload a bad file and read its line errors, upload a good one, start a
job on the tiny model from the form, watch its curve get points, pause and resume it, open the
finished model, run a comparison, and send a playground prompt that gets three answers.

A screenshot of each page goes to the folder this test prints (TUNERY_SCREENSHOTS to choose it)."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_serve import KEY, start_server

pytestmark = pytest.mark.process

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: pip install -e '.[dev]'")
WAIT_MS = 60_000  # what a page waits for the server: the data doctor on 2 loaded cores takes seconds, not 5
playwright.expect.set_options(timeout=WAIT_MS)


def chromium() -> str:
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if path and os.access(path, os.X_OK):
            return path
    raise AssertionError("Chromium is needed for this test: `make browser` installs Debian's chromium package")


def expected(response) -> bool:
    """The answers this test provokes on purpose: a wrong key, a bad job form."""
    return (response.status == 401 and response.url.endswith("/login")) or (
        response.status == 400 and response.url.endswith("/v1/fine_tuning/jobs"))


def points_at_least(page, n: int, timeout: float) -> int:
    """Wait for the job page's curve to hold n points (polled here: the page's CSP forbids the
    string evaluation wait_for_function uses)."""
    deadline = time.time() + timeout
    while True:
        got = int(page.locator("#curve").get_attribute("data-points") or 0)
        if got >= n:
            return got
        assert time.time() < deadline, f"the curve has {got} points, not {n}"
        time.sleep(0.25)


def option(page, select: str, starts: str) -> str:
    """The value of the option whose label starts with `starts`."""
    return next(o.get_attribute("value") for o in page.locator(f"{select} option").all()
                if o.inner_text().startswith(starts))


def rows(answer: str, n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"the color is {answer}"}]} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TUNERY_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("console-home")
    proc, url = start_server(home, "--api-key", KEY, "--base", f"tiny={tiny_model}")
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(WAIT_MS)
        pg = context.new_page()
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
              and not msg.text.startswith("Failed to load resource") else None)  # those: the response check
        pg.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and not expected(r) else None)
        yield pg
        browser.close()
        assert not errors, errors  # no script error on any page (a CSP violation is one too)


def test_the_console_end_to_end(server, page, shots, tmp_path):
    expect = playwright.expect
    # Log in: a page asks for the login, which sets the session cookie.
    page.goto(server + "/data")
    assert "/login" in page.url
    page.fill("#login-key", "wrong")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_be_visible()
    page.screenshot(path=shots / "login.png")
    page.fill("#login-key", KEY)
    page.click("#login-submit")
    page.wait_for_url(server + "/data")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tunery_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]

    # Data: a bad file shows its errors by line; a good one its histogram and trained tokens.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(r) for r in rows("blue", 2)]
                             + ['{"messages": [{"role": "user", "content": "unanswered"}]}', "{oops"]) + "\n")
    expect(page.locator("#data-model option[value=tiny]")).to_have_count(1)
    page.select_option("#data-model", "tiny")
    page.set_input_files("#upload-file", str(bad))
    page.click("#upload-submit")
    expect(page.locator("#data-errors tbody tr")).to_have_count(2)
    lines = page.locator("#data-errors tbody tr td:first-child").all_inner_texts()
    assert lines == ["3", "4"]
    expect(page.locator("#data-summary")).to_contain_text("2 errors")
    page.screenshot(path=shots / "data-bad-file.png", full_page=True)
    page.set_input_files("#upload-file", str(write_jsonl(tmp_path / "train.jsonl", rows("blue", 40))))
    page.click("#upload-submit")
    expect(page.locator("#data-summary")).to_contain_text("40 usable")
    expect(page.locator("#example mark.trained").first).to_contain_text("blue")
    assert page.locator("#histogram svg rect").count() >= 1
    page.screenshot(path=shots / "data.png", full_page=True)
    page.set_input_files("#upload-file", str(write_jsonl(tmp_path / "held-out.jsonl", rows("blue", 6, start=200))))
    page.click("#upload-submit")
    expect(page.locator("#data-summary")).to_contain_text("6 usable")

    # Jobs: a bad form value gets the API's message; a good one starts a job.
    page.click("nav >> text=Jobs")
    page.wait_for_url(server + "/")
    expect(page.locator("#job-model option[value=tiny]")).to_have_count(1)
    page.select_option("#job-model", "tiny")
    page.select_option("#job-file", option(page, "#job-file", "train.jsonl"))
    page.fill("#job-batch", "999")
    page.click("#job-submit")
    expect(page.locator("#job-error")).to_contain_text("batch_size: Input should be less than or equal to 256")
    page.fill("#job-batch", "8")
    page.fill("#job-lr", "150")
    page.fill("#job-steps", "300")
    page.fill("#job-val-split", "0.1")
    page.fill("#job-suffix", "console")
    page.screenshot(path=shots / "jobs-form.png", full_page=True)
    page.click("#job-submit")
    page.wait_for_url(re.compile(r"/jobs/ftjob-[0-9a-f]{24}$"))
    job_url = page.url

    # The curve gets points as steps arrive; pause, then resume.
    points_at_least(page, 3, timeout=120)
    expect(page.locator("#pause")).to_be_enabled()
    page.click("#pause")
    expect(page.locator("#job-status")).to_have_text("paused", timeout=60_000)
    paused_at = int(page.locator("#curve").get_attribute("data-points"))
    page.screenshot(path=shots / "job-paused.png", full_page=True)
    expect(page.locator("#resume")).to_be_enabled()
    page.click("#resume")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=240_000)
    assert int(page.locator("#curve").get_attribute("data-points")) > paused_at
    expect(page.locator("#events li").first).to_contain_text("successfully completed")
    assert page.locator("#curve svg polyline").count() == 2  # train and validation
    page.screenshot(path=shots / "job.png", full_page=True)

    # The finished model: its record, lineage and curve.
    page.click("#model-link")
    page.wait_for_url(re.compile(r"/models/ft%3Atiny"))
    expect(page.locator("#model-status")).to_have_text("completed")
    expect(page.locator("#lineage svg g[data-model]")).to_have_count(1)
    expect(page.locator("#model-curve svg polyline").first).to_be_attached()
    page.click("#reeval")
    expect(page.locator("#task table.rerun")).to_be_visible(timeout=120_000)
    expect(page.locator("#evals tbody tr")).to_have_count(1)
    page.screenshot(path=shots / "model.png", full_page=True)
    model_name = page.locator("#model-name").inner_text()

    page.goto(server + "/models")
    expect(page.locator(f"#models tbody tr[data-model='{model_name}']")).to_have_count(1)
    expect(page.locator("#bases li")).to_have_text(["default", "tiny"])
    page.screenshot(path=shots / "models.png", full_page=True)

    # Compare: base vs prompt-only vs the fine-tune on the held-out upload, with the report.
    page.goto(server + "/compare")
    page.select_option("#cmp-model", model_name)
    page.select_option("#cmp-file", option(page, "#cmp-file", "held-out.jsonl"))
    page.click("#cmp-submit")
    expect(page.locator("#cmp-result")).to_be_visible(timeout=180_000)
    expect(page.locator("#cmp-table thead th")).to_have_count(4)
    report = page.frame_locator("#report")
    expect(report.locator("h1")).to_have_text("What fine-tuning changed")
    page.screenshot(path=shots / "compare.png", full_page=True)

    # Playground: one prompt, three streamed answers with their tokens and latency.
    page.goto(server + "/playground?model=" + model_name)
    expect(page.locator("#pg-model")).to_have_value(model_name)
    page.fill("#pg-prompt", "question 7")
    page.fill("#pg-max", "12")
    page.click("#pg-send")
    for box in ("#pg-base", "#pg-prompt_only", "#pg-tuned"):
        expect(page.locator(box)).to_have_attribute("data-done", "true", timeout=120_000)
        expect(page.locator(f"{box} .meta")).to_contain_text("answer tokens")
        assert page.locator(f"{box} .text").inner_text().strip(), box
    assert page.locator("#pg-tuned .text").inner_text().strip() == "the color is blue"
    page.screenshot(path=shots / "playground.png", full_page=True)

    # The job page of a finished job still draws its whole history.
    page.goto(job_url)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    points_at_least(page, 300, timeout=30)
