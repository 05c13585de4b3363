"""The chat page at `/`, driven in real Chromium (Debian's package, through Playwright) against a
real `slm serve` with an API key: streaming, stop (the server frees the request's KV blocks),
regenerate, edit, reload, the key prompt, HTML in replies shown as text, JSON and tool calls,
server errors as sent, and a phone-sized screen. Screenshots land in target/ui-screenshots/."""

import json
import shutil
import time

import httpx
import pytest

from conftest import API_KEY, QWEN, ROOT

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "target" / "ui-screenshots"
# This machine's network is closed: Chromium's own background traffic would only fail.
ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS, chromium_sandbox=False)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser profile (empty storage) on the page, key entered, the Qwen model picked."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.dialogs, pg.answers = [], []

    def on_dialog(d):
        pg.dialogs.append(d.message)
        d.accept(pg.answers.pop(0)) if pg.answers else d.dismiss()

    pg.on("dialog", on_dialog)
    pg.goto(server.base + "/")
    enter_key(pg)
    yield pg
    ctx.close()


def enter_key(pg, key=API_KEY):
    pg.wait_for_selector("#auth:not([hidden])")
    pg.fill("#api-key", key)
    pg.press("#api-key", "Enter")
    pg.wait_for_function(f"() => [...document.querySelectorAll('#model option')].some(o => o.value === {json.dumps(QWEN)})")
    pg.select_option("#model", QWEN)


def settings(pg, **fields):
    if pg.is_hidden("#settings"):
        pg.click("#toggle-settings")
    for k, v in fields.items():
        if isinstance(v, bool):
            pg.set_checked(f"#{k}", v)
        else:
            pg.fill(f"#{k}", str(v))


def send(pg, text):
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def last_reply(pg):
    return pg.locator("#messages article.assistant").last


def wait_done(pg, timeout_s=60):
    pg.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#messages article.assistant')].pop();"
        " return a && a.dataset.state !== 'streaming'; }",
        timeout=timeout_s * 1000,
    )
    return last_reply(pg)


def kv_blocks_used(server):
    return server.metrics()[f'slm_kv_cache_blocks_used{{model="{QWEN}"}}']


def test_page_is_served_with_a_strict_policy_and_no_key(server):
    r = httpx.get(server.base + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert httpx.get(server.base + "/ui/app.js").headers["content-type"].startswith("text/javascript")
    # The API itself still needs the key.
    assert httpx.get(server.base + "/v1/models").status_code == 401


def test_a_reply_streams_token_by_token_with_its_speed(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    settings(page, temperature=0, max_tokens=120, seed=7)
    # Record every length the reply's text passes through while it streams.
    page.evaluate(
        """() => { window.lengths = [];
        new MutationObserver(() => { const a = [...document.querySelectorAll('#messages article.assistant')].pop();
          if (a) window.lengths.push(a.querySelector('.body').textContent.length); })
        .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }"""
    )
    send(page, "Write a Python function that checks whether a number is prime, with a docstring.")
    page.wait_for_selector("#messages article.assistant[data-state=streaming]")
    assert page.is_visible("#stop") and page.is_hidden("#send")
    reply = wait_done(page)
    assert reply.get_attribute("data-state") == "done"
    distinct = sorted(set(page.evaluate("() => window.lengths")))
    assert len(distinct) >= 5, f"the reply did not grow piece by piece: {distinct}"
    meta = reply.locator(".meta").inner_text()
    assert "tokens/s" in meta and "to first token" in meta, meta
    # Code blocks come with a copy button; the model's code is shown as code.
    assert reply.locator(".code pre code").count() >= 1
    assert reply.locator(".code button.copy").count() >= 1
    page.click("#toggle-settings")  # closed, so the reply fills the screenshot
    page.screenshot(path=str(SHOTS / "desktop.png"))
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") != "rgb(255, 255, 255)"
    page.screenshot(path=str(SHOTS / "desktop-dark.png"))


def test_stop_aborts_and_the_server_frees_the_kv_blocks(page, server):
    settings(page, temperature=0.8, max_tokens=3000, seed=1)
    send(page, "Write a very long story about a lighthouse keeper, in twenty chapters.")
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#messages article.assistant')].pop();"
        " return a && a.querySelector('.body').textContent.length > 40; }"
    )
    assert kv_blocks_used(server) > 0
    page.keyboard.press("Escape")  # Esc stops, as the stop button does
    reply = wait_done(page, 10)
    assert reply.get_attribute("data-state") == "stopped"
    assert "stopped" in reply.locator(".meta").inner_text()
    deadline = time.time() + 5
    while kv_blocks_used(server) != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert kv_blocks_used(server) == 0
    assert page.is_visible("#send") and page.is_hidden("#stop")


def test_regenerate_edit_and_reload(page):
    settings(page, temperature=0, max_tokens=24, seed=3)
    send(page, "Name one colour.")
    wait_done(page)
    posts = []
    page.on("request", lambda r: posts.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    last_reply(page).locator("button.regenerate").click()
    wait_done(page)
    assert len(posts) == 1 and posts[0]["messages"][-1] == {"role": "user", "content": "Name one colour."}
    assert page.locator("#messages article.assistant").count() == 1

    # Edit the question: the conversation is cut there and resent.
    page.locator("#messages article.user button.edit").first.click()
    page.fill("#messages article.user .edit-area", "Name one animal.")
    page.locator("#messages article.user button.primary").click()
    wait_done(page)
    assert posts[-1]["messages"][-1]["content"] == "Name one animal."
    assert page.locator("#messages article").count() == 2
    answer = last_reply(page).locator(".body").inner_text()

    page.reload()
    page.wait_for_selector("#messages article.assistant")
    assert page.locator("#conversations li .title").first.inner_text() == "Name one colour."
    assert page.locator("#messages article.user").first.inner_text().startswith("Name one animal.")
    assert last_reply(page).locator(".body").inner_text() == answer


def test_conversations_are_renamed_exported_and_deleted(page):
    settings(page, temperature=0, max_tokens=8)
    send(page, "Say hi.")
    wait_done(page)
    page.answers.append("Greetings")
    item = page.locator("#conversations li.active")
    item.locator("button", has_text="Rename").click()
    page.wait_for_function("() => document.querySelector('#conversations li.active .title').textContent === 'Greetings'")
    with page.expect_download() as dl:
        page.click("#export")
    exported = json.loads(open(dl.value.path()).read())
    conv = exported["conversations"][0]
    assert conv["title"] == "Greetings" and conv["messages"][0] == {"role": "user", "content": "Say hi."}
    assert conv["messages"][1]["role"] == "assistant" and "stats" in conv["messages"][1]
    page.answers.append("")
    page.locator("#conversations li.active button", has_text="Delete").click()
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 0")


def test_a_wrong_key_is_refused_and_a_right_one_works(browser, server):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.goto(server.base + "/ui")
    pg.wait_for_selector("#auth:not([hidden])")
    pg.fill("#api-key", "not-the-key")
    pg.press("#api-key", "Enter")
    pg.wait_for_function("() => document.querySelector('#auth label').textContent.includes('Incorrect API key')")
    assert pg.locator("#model option").count() == 0
    pg.fill("#api-key", API_KEY)
    pg.press("#api-key", "Enter")
    pg.wait_for_selector("#auth", state="hidden")
    assert pg.locator("#model option").count() >= 1
    ctx.close()


XSS = '<img src=x onerror=alert(1)> and <script>alert(2)</script> [click](javascript:alert(3)) ![p](http://127.0.0.1:9/pixel.png)'


def canned_stream(content=None, tool_calls=None):
    """An SSE body as the server writes it, for replies a model will not give on request."""
    delta = {"role": "assistant"}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    chunks = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_calls else "stop"}]},
        {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}},
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_html_in_a_reply_or_a_message_is_shown_as_text(page, server):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=canned_stream(XSS + "\n\n`<b>x</b>`")))
    send(page, "Repeat: " + XSS)
    reply = wait_done(page)
    text = reply.locator(".body").inner_text()
    assert "<img src=x onerror=alert(1)>" in text and "<script>alert(2)</script>" in text
    msgs = page.locator("#messages")
    assert msgs.locator("img, script, b, iframe").count() == 0
    assert msgs.locator("a[href^='javascript']").count() == 0
    assert page.locator("#messages article.user").inner_text().startswith("Repeat: <img")
    # The real model, asked to repeat it, renders as text too.
    page.unroute("**/v1/chat/completions")
    settings(page, temperature=0, max_tokens=60)
    send(page, "Repeat exactly, with nothing else: <img src=x onerror=alert(1)><script>alert(2)</script>")
    wait_done(page)
    assert msgs.locator("img, script, iframe").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == [], page.dialogs
    strangers = [u for u in requests if not u.startswith(server.base)]
    assert strangers == [] and not any(u.endswith("/x") or "pixel" in u for u in requests), requests


def test_json_mode_and_tool_calls_are_shown_as_formatted_json(page):
    settings(page, temperature=0, max_tokens=80, json_mode=True)
    send(page, "Give a JSON object with keys name and age for a made-up person.")
    reply = wait_done(page)
    block = reply.locator(".code pre code").first.inner_text()
    assert json.loads(block) is not None and "\n  " in block, block

    calls = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=canned_stream(tool_calls=calls)))
    settings(page, json_mode=False, tools=json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]))
    send(page, "Weather in Paris?")
    reply = wait_done(page)
    shown = json.loads(reply.locator(".code pre code").last.inner_text())
    assert shown == [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]


def test_the_server_error_is_shown_as_it_sent_it(page, server):
    body = {"model": QWEN, "messages": [{"role": "user", "content": "hi"}], "temperature": 7, "stream": True, "stream_options": {"include_usage": True}, "top_p": 0.95}
    r = httpx.post(server.base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    settings(page, temperature=7, top_p=0.95, max_tokens="")
    send(page, "hi")
    reply = wait_done(page)
    assert reply.get_attribute("data-state") == "error"
    shown = reply.locator(".error").inner_text()
    assert message in shown and "HTTP 400" in shown, shown
    # A malformed tools field is caught in the page, before any request.
    settings(page, temperature=0, tools="[not json")
    send(page, "hi again")
    assert page.locator("#settings-error").inner_text().startswith("Tools is not valid JSON")


def test_a_phone_screen(browser, server):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.goto(server.base + "/")
    enter_key(pg)
    assert pg.is_visible("#open-side")
    box = pg.locator("#sidebar").bounding_box()
    assert box["x"] + box["width"] <= 1, "the conversation list should be off-screen until opened"
    settings(pg, temperature=0, max_tokens=60)
    pg.click("#toggle-settings")
    send(pg, "Show a one-line shell command that counts files in a directory.")
    wait_done(pg)
    assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / "phone.png"))
    pg.click("#open-side")
    pg.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    assert pg.locator("#conversations li").count() == 1
    ctx.close()
