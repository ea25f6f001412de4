"""The web dashboard a coordinator's ``--api`` serves at ``/``, driven in a real browser (Debian's chromium
through its chromium-driver, with Selenium) against a real grid of three node processes.

Selenium rather than Playwright: both install from PyPI, but Playwright drives the one Chromium build it
downloads from its own CDN (which CI cannot reach; a distro chromium is unsupported), while Debian builds
chromium-driver from the same sources as chromium, so the pair always matches. The test never lets
Selenium fetch anything: it names the browser and the driver itself.

One worker's model file is named like an attack (``<img src=x onerror=...>``): the page must show that
name as text and run nothing. Set ``OPENGRID_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to keep the
screenshot of the coordinator's page (README links it).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, DemoNode, wait_for_workers
from opengrid.engines.models import sha256_file
from opengrid.node.dashboard import CONTENT_SECURITY_POLICY

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.slow
NETWORK = "opengrid-dashboard"
HOSTILE = "<img src=x onerror=window.__pwned=1>"
"""A model name an attacker picks (the worker's model file is ``HOSTILE + '.gguf'``)."""
WORKER_KEY = "worker-api-key"
"""worker-1 serves its API with a key: its page must ask for it."""
PAGE_WAIT_S = 30.0
"""The most a page may take to show what the grid did (it polls every second)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _browser_paths() -> tuple[str, str]:
    """Chromium and its driver: ``OPENGRID_CHROMIUM`` / ``OPENGRID_CHROMEDRIVER``, else on PATH.

    Missing where apt exists (CI, Debian, Ubuntu): the test fails, since scripts/setup.sh installs them there.
    Missing where setup cannot install apt packages (no apt-get: macOS, other distributions): skipped."""
    chromium = os.environ.get("OPENGRID_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("OPENGRID_CHROMEDRIVER") or shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p)
    if shutil.which("apt-get") is None:
        pytest.skip(
            f"{missing} not found and this system has no apt-get, so scripts/setup.sh cannot install them: "
            "install chromium and its chromedriver, or point OPENGRID_CHROMIUM and OPENGRID_CHROMEDRIVER "
            "at them"
        )
    pytest.fail(
        f"{missing} not found: the dashboard's browser test needs Debian's chromium and chromium-driver "
        "packages; run scripts/setup.sh (make setup), which installs them with apt"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless chromium driven by chromedriver, with every file it writes under a temporary directory."""
    chromium, driver_path = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: it is in the dev extra; run scripts/setup.sh (make setup)")
    home = tmp_path_factory.mktemp("browser")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # no update checks, no outside requests of its own
        "--window-size=1400,1000",
        f"--user-data-dir={home / 'profile'}",
        f"--disk-cache-dir={home / 'cache'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console: CSP violations land there
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home), XDG_CACHE_HOME=str(home))
    service = Service(executable_path=driver_path, log_output=str(home / "chromedriver.log"), env=env)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


class Grid:
    """A coordinator with ``--api`` and two workers (one of them with ``--api`` too)."""

    def __init__(self, coordinator: DemoNode, workers: list[DemoNode], api: str, worker_api: str) -> None:
        self.coordinator = coordinator
        self.workers = workers
        self.api = api
        self.worker_api = worker_api


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: pathlib.Path) -> Iterator[Grid]:
    base = tmp_path_factory.mktemp("dashboard")
    hostile_model = base / "models" / f"{HOSTILE}.gguf"  # the same weights under an attacker's name
    hostile_model.parent.mkdir()
    shutil.copyfile(tiny_model_path, hostile_model)
    net = DemoNetwork(base, model=str(tiny_model_path), network=NETWORK)
    api_port, worker_port = _free_port(), _free_port()
    try:
        coordinator = net.start("coordinator", "coordinator", extra_args=["--api", f"127.0.0.1:{api_port}"])
        net.wait_ready(coordinator)
        workers = [
            net.start(
                "worker-1",
                "worker",
                bootstrap=coordinator.addrs[0],
                extra_args=["--api", f"127.0.0.1:{worker_port}", "--api-key", WORKER_KEY],
            ),
            net.start(
                "worker-2",
                "worker",
                bootstrap=coordinator.addrs[0],
                extra_args=["--model", str(hostile_model)],
            ),
        ]
        for worker in workers:
            net.wait_ready(worker)
        with Client([coordinator.addrs[0]], network=NETWORK) as client:
            wait_for_workers(client, 2, timeout=60)
        yield Grid(coordinator, workers, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}")
    finally:
        net.stop()


def _peer(node: DemoNode) -> str:
    return node.addrs[0].rsplit("/p2p/", 1)[-1]


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def _wait(driver: WebDriver, what: str, condition: Any) -> None:
    """Wait (at most ``PAGE_WAIT_S``, polling every 0.2 s) for ``condition(driver)``; fail saying ``what``
    was not seen, with the page's status line."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    try:
        WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=0.2).until(condition)
    except TimeoutException:
        pytest.fail(
            f"the page did not show {what} within {PAGE_WAIT_S} s; its status: {_text(driver, 'status')!r}"
        )


def _rows(driver: WebDriver, tbody: str) -> list[list[dict[str, str]]]:
    """The rows of a table as its cells' text, title and class, read in one script: the page redraws its
    tables every second, so elements found one call earlier may be gone (stale) by the next."""
    rows = driver.execute_script(
        """return [...document.querySelectorAll(`#${arguments[0]} tr`)]
            .filter((tr) => !tr.querySelector("td.empty"))
            .map((tr) => [...tr.cells].map(
                (td) => ({text: td.textContent, title: td.title, cls: td.className})));""",
        tbody,
    )
    return list(rows)


def _worker_columns(driver: WebDriver) -> set[str]:
    """ "ok" per worker row whose tier is set, RTT a number of ms, and reputation one valid result."""
    seen = set()
    for row in _rows(driver, "workers"):
        cells = [cell["text"] for cell in row]
        tier, rtt, valid, invalid = cells[2], cells[4], cells[6], cells[7]
        good = (
            tier in ("Platinum", "Gold", "Silver", "Bronze") and float(rtt.replace("\N{EN DASH}", "-1")) > 0
        )
        seen.add("ok" if good and (valid, invalid) == ("1", "0") else repr(cells))
    return seen


def test_the_coordinators_page_shows_its_workers_and_updates_when_a_job_runs(
    grid: Grid, browser: WebDriver, tiny_model_path: pathlib.Path
) -> None:
    page = httpx.get(f"{grid.api}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY

    browser.get(f"{grid.api}/")
    _wait(browser, "two workers online", lambda d: _text(d, "workers-online") == "2")
    rows = _rows(browser, "workers")
    shown = {row[0]["title"] for row in rows}
    assert shown == {_peer(w) for w in grid.workers}
    models = sorted(cell["text"] for row in rows for cell in row if cell["cls"] == "model")
    assert models == sorted([tiny_model_path.stem, HOSTILE])  # the attacker's name, as plain text
    assert browser.find_elements("css selector", "img") == []  # ... never as markup
    assert browser.execute_script("return window.__pwned === undefined") is True
    assert _text(browser, "jobs-answered") == "0"
    assert _rows(browser, "receipts") == []

    # One verified job through the coordinator's API (both workers serve these weights: name the sha256).
    reply = httpx.post(
        f"{grid.api}/v1/completions",
        json={"model": sha256_file(tiny_model_path), "prompt": "The grid", "max_tokens": 6, "replicas": 2},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    job_id = reply.json()["opengrid"]["job_id"]

    _wait(browser, "the job answered", lambda d: _text(d, "jobs-answered") == "1")
    _wait(browser, "its receipt", lambda d: len(_rows(d, "receipts")) == 1)
    receipt = _rows(browser, "receipts")[0]
    assert receipt[1]["title"] == job_id
    assert int(receipt[3]["text"]) == reply.json()["usage"]["completion_tokens"]
    assert _text(browser, "jobs-minute") == "1"
    assert _text(browser, "latency").endswith(" ms")  # p50 / p95 of the one job
    _wait(browser, "the workers' points", lambda d: len(_rows(d, "balances")) >= 2)
    # Each worker: its tier (from its announcements), the RTT the coordinator measured, its reputation.
    _wait(browser, "every worker's tier, RTT and one valid result", lambda d: _worker_columns(d) == {"ok"})

    # Everything the page loaded came from the node, and the browser reported no violation of the CSP.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(str(url).startswith(grid.api + "/") for url in resources), resources
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], problems
    # ... and the browser enforces that CSP: the page may not reach another origin (127.0.0.2 is one,
    # and loopback, so a broken policy would not send anything off the machine either).
    violated = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        document.addEventListener("securitypolicyviolation", (e) => done(e.effectiveDirective), {once: true});
        fetch("http://127.0.0.2:9/elsewhere").then(() => done("fetched"), () => {});
        setTimeout(() => done("no violation"), 5000);"""
    )
    assert violated == "connect-src"

    screenshot = os.environ.get("OPENGRID_DASHBOARD_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)


def test_a_workers_page_says_the_grids_dashboard_is_its_coordinators(
    grid: Grid, browser: WebDriver, tiny_model_path: pathlib.Path
) -> None:
    browser.get(f"{grid.worker_api}/")
    # The page holds no data; the state wants the API key, so the page asks for it.
    _wait(browser, "the key form", lambda d: d.find_element("id", "key-form").is_displayed())
    assert "needs its key" in _text(browser, "status")
    assert not browser.find_element("id", "worker-view").is_displayed()
    browser.find_element("id", "key").send_keys("wrong")
    browser.find_element("css selector", "#key-form button").click()
    _wait(browser, "the wrong key refused", lambda d: "key was refused" in _text(d, "status"))
    browser.find_element("id", "key").clear()
    browser.find_element("id", "key").send_keys(WORKER_KEY)
    browser.find_element("css selector", "#key-form button").click()
    _wait(browser, "the worker's own view", lambda d: d.find_element("id", "worker-view").is_displayed())
    assert not browser.find_element("id", "grid-view").is_displayed()
    assert "worker, not a coordinator: the grid's dashboard is on its coordinator's" in _text(
        browser, "worker-view"
    )
    assert _text(browser, "w-models") == tiny_model_path.stem
    _wait(browser, "its coordinator", lambda d: _text(d, "w-coordinator") == _peer(grid.coordinator))
