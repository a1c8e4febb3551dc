"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a real
three-node cluster: every page loads, shows what the API says, its buttons act, and no page logs
a console error. Screenshots of each page go to $RAFTFLOW_UI_OUT (default: console-screenshots/
under the cargo target directory).

Run by `make test` as: $VENV/bin/python -m pytest cluster-tests/ui
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import sync_playwright, expect

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target"))
BIN = os.environ.get("RAFTFLOW_BIN", os.path.join(TARGET, "release", "raftflow"))
OUT = os.environ.get("RAFTFLOW_UI_OUT", os.path.join(TARGET, "console-screenshots"))
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")

ORDER = {
    "name": "order",
    "initial": "created",
    "states": {
        "created": {"on": {"pay": "paid", "cancel": "cancelled"}},
        "paid": {"task": {"type": "ship"}, "on": {"task.completed": "shipped", "task.failed": "cancelled"}},
        "shipped": {"timer_ms": 60000, "on": {"timer.fired": "delivered"}},
        "delivered": {"terminal": "succeeded"},
        "cancelled": {"terminal": "cancelled"},
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def cluster():
    assert os.path.exists(BIN), f"build the binary first: {BIN}"
    work = tempfile.mkdtemp(prefix="raftflow-ui-")
    ports = [(free_port(), free_port()) for _ in range(3)]
    initial = ",".join(f"{i + 1}=127.0.0.1:{c}/127.0.0.1:{p}" for i, (c, p) in enumerate(ports))
    procs = []
    for i in range(3):
        log = open(os.path.join(work, f"n{i + 1}.log"), "w")
        procs.append(subprocess.Popen(
            [BIN, "serve", "--id", str(i + 1), "--initial-cluster", initial, "--groups", "2",
             "--data-dir", os.path.join(work, f"n{i + 1}")],
            stdout=log, stderr=subprocess.STDOUT))
    bases = [f"http://127.0.0.1:{c}" for c, _ in ports]
    deadline = time.time() + 60
    while True:
        ready = 0
        for b in bases:
            try:
                with urllib.request.urlopen(b + "/readyz", timeout=2) as r:
                    ready += r.status == 200
            except Exception:
                pass
        if ready == 3:
            break
        assert time.time() < deadline, "the cluster did not become ready in 60 s"
        time.sleep(0.2)
    yield bases
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    os.makedirs(OUT, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert errors == [], f"console errors: {errors}"


def shot(page, name):
    page.screenshot(path=os.path.join(OUT, f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def data(cluster):
    """The order definition, seven orders; order-2 paid, order-3 cancelled."""
    base = cluster[0]
    assert call(base, "PUT", "/v1/definitions/order", ORDER)[0] in (200, 201)
    for i in range(1, 8):
        assert call(base, "POST", "/v1/workflows", {"id": f"order-{i}", "definition": "order", "context": {"amount": 10 * i}})[0] in (200, 201)
    assert call(base, "POST", "/v1/workflows/order-2/events", {"event": "pay"})[0] == 200
    assert call(base, "POST", "/v1/workflows/order-3/cancel", {})[0] == 200
    return cluster


def test_workflow_list_matches_the_api_filters_and_pages(data, page):
    base = data[1]
    page.goto(base + "/ui/")
    expect(page.locator("#workflows tbody tr")).to_have_count(7)
    ids = sorted(page.locator("#workflows tbody tr td:first-child").all_inner_texts())
    api = sorted(w["id"] for w in call(base, "GET", "/v1/workflows")[1]["workflows"])
    assert ids == api
    shot(page, "workflows")
    # Filter by status through the form.
    page.select_option("select[name=status]", "cancelled")
    page.click("button[type=submit]")
    expect(page.locator("#workflows tbody tr")).to_have_count(1)
    expect(page.locator("#workflows tbody tr td").first).to_have_text("order-3")
    # Paging: 3 a page.
    # The console shows the API's pages, in its order: the first, then (Next page) the second.
    pages = [call(base, "GET", "/v1/workflows?limit=3")[1]]
    token = pages[0]["next_page_token"]
    pages.append(call(base, "GET", f"/v1/workflows?limit=3&page_token={token}")[1])
    first, second = ([w["id"] for w in p["workflows"]] for p in pages)
    assert len(first) == 3 and len(second) == 3 and not set(first) & set(second)
    cells = page.locator("#workflows tbody tr td:first-child")
    page.goto(base + "/ui/#/workflows?limit=3")
    expect(cells).to_have_text(first)
    page.click("text=Next page")
    # Waits for the second page to replace the first: the rows change after the click returns.
    expect(cells).to_have_text(second)
    # Live refresh: a workflow made through the API appears without a reload.
    page.goto(base + "/ui/#/workflows")
    expect(page.locator("#workflows tbody tr")).to_have_count(7)
    call(base, "POST", "/v1/workflows", {"id": "order-live", "definition": "order"})
    expect(page.locator("#workflows tbody tr")).to_have_count(8, timeout=8000)


def test_workflow_page_sends_events_and_cancels(data, page):
    base = data[2]
    page.goto(base + "/ui/#/workflow/order-1")
    expect(page.locator("#wf-state")).to_have_text("created")
    expect(page.locator("#context")).to_contain_text('"amount": 10')
    expect(page.locator("#history li")).to_have_count(1)
    shot(page, "workflow")
    page.click("button[data-event=pay]")
    expect(page.locator("#wf-state")).to_have_text("paid")
    expect(page.locator("#wf-revision")).to_have_text("2")
    expect(page.locator("#history li")).to_have_count(2)
    # Entering `paid` opened the ship task, shown as the open step.
    expect(page.locator("#open-step")).to_contain_text("Task: ship")
    expect(page.locator("#open-step")).to_contain_text("order-1:2")
    assert call(base, "GET", "/v1/workflows/order-1")[1]["state"] == "paid"
    shot(page, "workflow-task")
    page.click("#cancel")
    expect(page.locator("#wf-status")).to_have_text("cancelled")
    expect(page.locator("#history li")).to_have_count(3)
    expect(page.locator("#actions")).to_have_count(0)
    assert call(base, "GET", "/v1/workflows/order-1")[1]["status"] == "cancelled"


def test_a_refused_event_shows_the_api_message(data, browser):
    # Its own page: the browser logs the 409 it expects as a failed resource.
    ctx = browser.new_context()
    page = ctx.new_page()
    base = data[0]
    page.goto(base + "/ui/#/workflow/order-4")
    expect(page.locator("#wf-state")).to_have_text("created")
    # Someone else moves the workflow on; the page's compare-and-set then fails with 409.
    call(base, "POST", "/v1/workflows/order-4/events", {"event": "pay"})
    page.click("button[data-event=cancel]")
    expect(page.locator("#error")).to_contain_text("revision_mismatch")
    expect(page.locator("#error")).to_contain_text("HTTP 409")
    expect(page.locator("#wf-state")).to_have_text("created")
    ctx.close()


def test_an_unknown_workflow_shows_the_api_error(data, browser):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.goto(data[0] + "/ui/#/workflow/no-such-thing")
    expect(pg.locator("#error")).to_contain_text("not_found")
    ctx.close()


def test_definition_page_draws_the_state_machine(data, page):
    base = data[0]
    page.goto(base + "/ui/#/definitions")
    expect(page.locator("#definitions tbody tr")).to_have_count(1)
    page.click("#definitions >> text=order")
    for state in ORDER["states"]:
        expect(page.locator(f'#diagram g[data-state="{state}"]')).to_have_count(1)
    expect(page.locator('#diagram g[data-state="paid"]')).to_contain_text("task ship")
    expect(page.locator('#diagram g[data-state="shipped"]')).to_contain_text("timer 60000 ms")
    expect(page.locator("#diagram")).to_contain_text("task.completed")
    expect(page.locator("#versions")).to_contain_text("v1")
    shot(page, "definition")


def test_cluster_page_matches_the_api(data, page):
    base = data[0]
    page.goto(base + "/ui/#/cluster")
    expect(page.locator("#nodes tbody tr")).to_have_count(3)
    view = call(base, "GET", "/v1/cluster")[1]
    expect(page.locator("#groups tbody tr")).to_have_count(len(view["groups"]))
    expect(page.locator("#placement")).to_contain_text("leader")
    for n in view["nodes"]:
        expect(page.locator("#nodes")).to_contain_text(n["client_addr"])
    expect(page.locator("#nodes")).to_contain_text("active")
    expect(page.locator("main")).to_contain_text(f"replication factor {view['replication_factor']}")
    shot(page, "cluster")


def test_a_cluster_with_tokens_asks_for_one_and_keeps_it_for_the_tab(browser):
    work = tempfile.mkdtemp(prefix="raftflow-ui-tokens-")
    token = "console-0123456789abcdef"
    with open(os.path.join(work, "tokens"), "w") as f:
        f.write(f"{token},console-user,reader\n")
    client, peer = free_port(), free_port()
    log = open(os.path.join(work, "n1.log"), "w")
    proc = subprocess.Popen(
        [BIN, "serve", "--id", "1", "--initial-cluster", f"1=127.0.0.1:{client}/127.0.0.1:{peer}",
         "--groups", "1", "--data-dir", os.path.join(work, "n1"),
         "--token-file", os.path.join(work, "tokens")],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{client}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert time.time() < deadline, "the node did not become ready in 60 s"
            time.sleep(0.2)
        assert call(base, "GET", "/v1/cluster")[0] == 401
        ctx = browser.new_context()
        pg = ctx.new_page()
        asked = []
        pg.on("dialog", lambda d: (asked.append(d.message), d.accept(token)))
        pg.goto(base + "/ui/#/cluster")
        expect(pg.locator("main")).to_contain_text("node")
        expect(pg.locator("#error")).to_be_hidden()
        assert len(asked) == 1 and "token" in asked[0]
        # Other pages of the same tab send the kept token without asking again.
        pg.goto(base + "/ui/#/definitions")
        expect(pg.locator("#error")).to_be_hidden()
        assert len(asked) == 1
        ctx.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
