"""The service's pages in a real browser (headless Chromium through Playwright): /docs renders the API from this
origin alone, and the operator console (/console) works end to end, under their CSP, with no console error.

They run against a real `wallet serve` on a database of its own: the console's actions (a refund, a freeze) and its
overview (every system account, the volume of every asset, the last verify report) must not meet other tests' data.
The browser tests are marked `browser` and skipped, saying so, where Chromium is not installed; the first test
checks what the pages are served with, over HTTP alone. Screenshots go to $WALLET_TEST_ARTIFACTS
(default: test-artifacts/ at the repository's root)."""

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, async_playwright, expect

from tests.conftest import serving
from tests.support import assert_problem, free_port, own_database, wallet_verify
from wallet import keys
from wallet.client import AsyncClient, Client
from wallet.config import Settings
from wallet.database import connect, migrate
from wallet.seed import seed

ROOT = Path(__file__).resolve().parent.parent
# Debian's chromium, never a browser build of Playwright's own (`playwright install` downloads one).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]
# Every CSP violation, as a console error (which the tab records); Chromium logs most of them itself too.
REPORT_CSP = (
    "document.addEventListener('securitypolicyviolation',"
    " e => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`))"
)
HISTORY_PAGE = 20  # the console's page size
TIMEOUT_MS = 15_000


@dataclass
class Site:
    base: str
    database_url: str
    admin: str
    reader: str
    webhook_id: str


@dataclass
class Tab:
    """A page, and what it did: every request's URL, every console error and uncaught exception."""

    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self, base: str) -> None:
        assert not self.errors, self.errors
        elsewhere = [url for url in self.requests if not (url.startswith(base + "/") or url.startswith("data:"))]
        assert not elsewhere, f"requests that left {base}: {elsewhere}"


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser tests need it")
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    directory = Path(os.environ.get("WALLET_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def site(chromium: str, server_url: str) -> Iterator[Site]:
    """The service on a database of its own: alice with more than a page of history, a webhook endpoint whose
    receiver refuses connections (so that it has failed attempts), and a verify report."""
    with own_database(server_url, "wallet_browser") as database_url:
        migrate(database_url)

        async def setup() -> tuple[str, str]:
            conn = await connect(database_url, Settings(database_url=database_url))
            try:
                await seed(conn)
                return await keys.create(conn, "console-admin", ["admin"]), await keys.create(conn, "reader", ["read"])
            finally:
                await conn.close()

        admin, reader = asyncio.run(setup())
        with serving(database_url) as base:
            headers = {"Authorization": f"Bearer {admin}"}
            hook = {"url": f"http://127.0.0.1:{free_port()}/hook", "types": ["transaction.posted"]}
            created = httpx.post(f"{base}/v1/webhooks", json=hook, headers=headers, timeout=10)
            assert created.status_code == 201, created.text
            webhook_id = created.json()["id"]
            with Client(base, admin) as wallet:
                for i in range(12):
                    wallet.topup("alice", "GOLD", 100 + i, description=f"Weekly allowance {i}")
                    wallet.purchase("alice", "GOLD", 40 + i, description=f"Sword #{i}", metadata={"item": i})
                wallet.create_user("alina", '<img src=x id="injected"> Alina')
            _wait_for_a_failed_attempt(base, headers, webhook_id)
            verified = wallet_verify(database_url)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            yield Site(base, database_url, admin, reader, webhook_id)


def _wait_for_a_failed_attempt(base: str, headers: dict[str, str], webhook_id: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = httpx.get(f"{base}/v1/webhooks/{webhook_id}/deliveries", headers=headers, timeout=10).json()
        if any(attempt["error"] or attempt["status_code"] for d in page["items"] for attempt in d["attempts"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"no delivery to {webhook_id} was attempted within {timeout_s} s")


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    await context.add_init_script(REPORT_CSP)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watched = Tab(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: watched.requests.append(request.url))
    yield watched
    await context.close()


def _accept(dialogs: list[str]) -> Callable[[Dialog], Awaitable[None]]:
    """Accepts every dialog (the console's confirmations), noting its message."""

    async def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    return accept


async def test_the_pages_are_served_from_the_package_with_their_csp(client: httpx.AsyncClient) -> None:
    api_csp = (await client.get("/health")).headers["content-security-policy"]
    assert api_csp == "default-src 'none'; frame-ancestors 'none'"
    pages = {
        "/docs": "text/html",
        "/docs/init.js": "text/javascript",
        "/docs/assets/swagger-ui-bundle.js": "text/javascript",
        "/docs/assets/swagger-ui.css": "text/css",
        "/console": "text/html",
        "/console/console.js": "text/javascript",
        "/console/console.css": "text/css",
    }
    for path, media_type in pages.items():
        for response in (await client.get(path), await client.head(path)):
            assert response.status_code == 200, (path, response.status_code)
            assert response.headers["content-type"].startswith(media_type), (path, response.headers)
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'; script-src 'self'; style-src 'self';" in csp, (path, csp)
            assert "unsafe" not in csp and "frame-ancestors 'none'" in csp, (path, csp)
            assert response.headers["x-frame-options"] == "DENY"
    # Only the files the pages load: not the rest of the distribution, nor anything else of the package.
    for path in ("/docs/assets/index.html", "/docs/assets/..%2F__init__.py", "/console/index.html", "/console/x"):
        assert_problem(await client.get(path), 404, "not_found")
    documented = (await client.get("/openapi.json")).json()["paths"]
    assert not [path for path in documented if path.startswith(("/docs", "/console"))], documented


@pytest.mark.browser
async def test_docs_render_every_operation_from_this_origin_alone(tab: Tab, site: Site, artifacts: Path) -> None:
    page = tab.page
    await page.goto(f"{site.base}/docs")
    await expect(page.locator(".opblock").first).to_be_visible()
    topups = page.locator('.opblock-post .opblock-summary-path[data-path="/v1/topups"]')
    await expect(topups).to_have_count(1)
    assert await page.locator(".opblock").count() >= 30
    await topups.click()  # the operation opens: its schemas and examples render too
    await expect(page.locator(".opblock-post.is-open .responses-table").first).to_be_visible()
    await page.screenshot(path=artifacts / "docs.png")
    tab.assert_clean(site.base)


@pytest.mark.browser
async def test_the_console_end_to_end(tab: Tab, site: Site, artifacts: Path) -> None:
    page = tab.page
    dialogs: list[str] = []
    page.on("dialog", _accept(dialogs))
    async with AsyncClient(site.base, site.admin) as wallet:
        gold = (await wallet.balance("alice", "GOLD")).balance
        total = len([tx async for tx in wallet.history("alice", page_size=200)])
    assert total > HISTORY_PAGE

    await page.goto(f"{site.base}/console")
    await page.fill("#key", site.admin)
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#whoami")).to_have_text(f"Signed in with key …{site.admin[-4:]}")
    assert await page.evaluate("sessionStorage.length") == 1
    assert await page.evaluate("document.cookie") == ""

    # Find alice by the start of her id; another match's display name is markup, shown as text.
    await page.fill("#search", "ali")
    await expect(page.locator("#matches")).to_contain_text('<img src=x id="injected"> Alina')
    assert await page.locator("#injected").count() == 0
    await page.get_by_role("button", name="alice", exact=True).click()
    gold_cell = page.locator('#balances tr[data-asset="GOLD"] .balance')
    await expect(gold_cell).to_have_text(f"{gold:,}")

    # The overview: a chart per asset, the system accounts, the last verify report, the failing webhook.
    await expect(page.locator('#volume figure[data-asset="GOLD"] rect.bar')).to_have_count(24)
    await expect(page.locator("#system")).to_contain_text("system:treasury")
    await expect(page.locator("#verify")).to_contain_text("consistent")
    webhook = page.locator(f'#webhooks .webhook[data-id="{site.webhook_id}"]')
    await expect(webhook.locator(".badge")).to_have_text("failing")
    await expect(webhook.locator(".failures li").first).to_contain_text("transaction.posted, attempt ")
    for section in ("find", "user", "history", "volume", "system", "verify", "webhooks"):
        await expect(page.locator(f"#{section}-error")).to_be_hidden()
    await page.screenshot(path=artifacts / "console-user.png", full_page=True)

    # History, a page at a time, and back.
    rows = page.locator("#history tr[data-id]")
    await expect(rows).to_have_count(HISTORY_PAGE)
    first_page = await rows.first.get_attribute("data-id")
    await page.click("#next")
    await expect(page.locator("#page")).to_have_text("Page 2")
    await expect(rows).to_have_count(min(total - HISTORY_PAGE, HISTORY_PAGE))
    await page.click("#prev")
    await expect(page.locator("#page")).to_have_text("Page 1")
    await expect(rows.first).to_have_attribute("data-id", first_page or "")

    # A purchase: its detail, then a partial refund, confirmed; the balance shown moves by the refund.
    purchase = page.locator('#history tr[data-type="purchase"]').first
    purchase_id = await purchase.get_attribute("data-id")
    await purchase.locator("button").click()
    await expect(page.locator("#transaction-title")).to_have_text(f"Transaction {purchase_id}")
    await expect(page.locator("#transaction")).to_contain_text("user:alice")
    await expect(page.locator("#refund-summary")).to_contain_text("Refunded 0 of")
    await page.fill("#refund-amount", "7")
    await page.fill("#refund-reason", "Sword never delivered")
    await page.click("#refund button[type=submit]")
    await expect(gold_cell).to_have_text(f"{gold + 7:,}")
    await expect(page.locator("#refund-summary")).to_contain_text("Refunded 7 of")
    await expect(page.locator('#history tr[data-type="refund"]').first).to_be_visible()
    assert len(dialogs) == 1 and purchase_id in dialogs[0], dialogs
    await expect(page.locator("#transaction-error")).to_be_hidden()
    await page.screenshot(path=artifacts / "console-transaction.png", full_page=True)

    # Freeze, then unfreeze, each confirmed.
    await page.fill("#freeze-reason", "Chargeback under review")
    await page.click("#freeze button[type=submit]")
    await expect(page.locator("#user-status")).to_have_text("frozen")
    await expect(page.locator("#user-frozen")).to_contain_text("Chargeback under review")
    await page.click("#unfreeze")
    await expect(page.locator("#user-status")).to_have_text("active")
    assert len(dialogs) == 3, dialogs
    async with AsyncClient(site.base, site.admin) as wallet:
        assert (await wallet.balance("alice", "GOLD")).balance == gold + 7
        assert (await wallet.user("alice")).status == "active"

    # Signing out forgets the key.
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    tab.assert_clean(site.base)


@pytest.mark.browser
async def test_the_console_shows_what_a_key_may_not_do_and_carries_on(tab: Tab, site: Site) -> None:
    page = tab.page
    await page.goto(f"{site.base}/console")
    await page.fill("#key", "wk_not_a_key")
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#signin-error")).to_contain_text("(401 unauthenticated)")
    assert await page.evaluate("sessionStorage.length") == 0

    await page.fill("#key", site.reader)  # read scope: everything but the webhooks, which are the operator's
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#webhooks-error")).to_contain_text("(403 forbidden)")
    await expect(page.locator("#system")).to_contain_text("system:treasury")
    await expect(page.locator("#verify")).to_contain_text("consistent")
    # The browser reports each 4xx answer on its console: those two, and nothing else.
    failed_loads = [error for error in tab.errors if "Failed to load resource" in error]
    assert len(failed_loads) == 2 and len(tab.errors) == 2, tab.errors
    tab.errors.clear()
    tab.assert_clean(site.base)
