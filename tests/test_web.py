"""The web page at ``/`` in a real browser: headless Chromium from the distribution's packages
(``/usr/bin/chromium``, installed by ``.ci/run``), driven by Playwright, against the real Serve
app on loopback with tiny checkpoints.

``HW4_WEB_STORAGE=results HW4_WEB_SHOTS=docs/web pytest tests/test_web.py`` serves the trained
models under ./results instead and saves the README's screenshots into docs/web/.
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import SERVE_TOKEN, SERVE_URL, needs_data

pytestmark = [pytest.mark.ray, needs_data]

URL, TOKEN = SERVE_URL, SERVE_TOKEN
CHROMIUM = os.environ.get("HW4_CHROMIUM", "/usr/bin/chromium")
# as root in a container, with this machine's closed network: no sandbox, no background traffic
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(serve_apps):
    return serve_apps["storage"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).is_file(), \
        f"{CHROMIUM} missing: install Debian's chromium package (.ci/run does)"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(server, browser):
    """A fresh page at / that records console errors and uncaught exceptions. Playwright's
    ``wait_for_function`` evaluates strings, which the server's Content-Security-Policy forbids
    (no 'unsafe-eval'), so these pages bypass it; the next test runs the page under it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(URL + "/")
    pg.wait_for_selector("#l-preds tr")  # start-up done: info loaded, test image 0 decoded
    yield pg
    context.close()


def shot(pg, selector: str, name: str, tmp_path: Path) -> None:
    """Screenshot of one panel (into HW4_WEB_SHOTS when set, else the test's temp folder)."""
    folder = Path(os.environ.get("HW4_WEB_SHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    pg.locator(selector).screenshot(path=str(path))
    assert path.stat().st_size > 2000


def test_the_page_works_under_its_content_security_policy(server, browser, tmp_path):
    """The real policy enforced: load, sample one row per digit with the classifier's verdicts,
    no violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    response = pg.goto(URL + "/")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    pg.wait_for_selector("#l-preds tr")
    pg.select_option("#s-digit", "rows")
    pg.select_option("#s-sampler", "ddim")  # eta is DDIM's: the other samplers disable it
    pg.fill("#s-steps", "20")
    pg.locator("#s-eta").fill("1")
    pg.fill("#s-n", "20")
    pg.click("#s-go")
    pg.wait_for_selector("#s-verdicts figure")
    assert pg.locator("#s-verdicts figure").count() == 20  # two of each digit
    assert "of 20 are the digit asked for" in pg.inner_text("#s-verdicts p")
    shot(pg, "#sampler", "sampler_digits", tmp_path)
    assert not errors, errors
    context.close()


def test_page_loads_with_no_console_errors_and_shows_the_models(page, tmp_path):
    assert page.title() == "hw4: VAE and DDPM playground"
    assert page.locator("#status").inner_text() == "DDPM loaded, VAE loaded"
    cards = page.locator("#i-out article")
    assert cards.count() == 2 and "checkpoint" in cards.nth(0).inner_text()
    assert page.locator("#i-out svg.chart").count() >= 1  # training curves from the history
    assert page.locator("#a-curves svg.chart polyline").count() == 3  # robustness curves
    source = page.get_by_text('from the evaluation run "').inner_text()  # a name, no file path
    assert "/" not in source.split(" of ")[0], source
    unlabeled = page.evaluate("""[...document.querySelectorAll('input, select')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
        .map(e => e.outerHTML)""")
    assert unlabeled == []
    shot(page, "#info", "info", tmp_path)
    assert page.errors == []


def test_the_chain_is_shown_live_before_the_samples(page, tmp_path):
    """The sampler panel streams the chain: x-hat-0 previews replace each other in place, with a
    progress bar and the step count, before the final grid replaces them."""
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver((records) => records.forEach((r) => {
            const live = r.target.closest && r.target.closest('figure.live');
            if (r.type === 'attributes' && live && r.target.src.startsWith('data:'))
                window.seen.push(['preview', live.querySelector('progress').value,
                                  live.querySelector('figcaption').textContent]);
            r.addedNodes.forEach((n) => { if (n.matches && n.matches('figure:not(.live)'))
                window.seen.push(['final']); });
        })).observe(document.getElementById('s-out'),
                    {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
    }""")
    page.select_option("#s-sampler", "ddpm")  # all T steps: a preview at every step
    page.fill("#s-n", "4")
    page.click("#s-go")
    if os.environ.get("HW4_WEB_SHOTS"):  # trained models: the chain is slow enough to catch
        page.wait_for_selector("#s-out figure.live img[src^='data:image/png']")
        page.wait_for_timeout(3000)
        shot(page, "#sampler", "sampler_live", tmp_path)
    page.wait_for_selector("#s-out figure:not(.live) img", timeout=300_000)
    seen = page.evaluate("window.seen")
    kinds = [s[0] for s in seen]
    assert kinds.count("preview") >= 2 and kinds.index("preview") < kinds.index("final"), seen
    steps = [s[1] for s in seen if s[0] == "preview"]
    assert steps == sorted(steps) and re.search(r"step \d+ of \d+", seen[0][2]), seen
    assert page.locator("#s-out figure.live").count() == 0  # the samples replaced the chain
    assert page.errors == []


def test_a_sample_is_generated_and_shown(page, tmp_path):
    page.fill("#s-steps", "5")
    page.fill("#s-n", "8")
    page.click("#s-go")
    img = page.wait_for_selector("#s-out figure:not(.live) img")  # the samples, after the chain
    page.wait_for_function("document.querySelector('#s-out img').naturalWidth > 0")
    caption = page.inner_text("#s-out figcaption")  # the default sampler, DPM-Solver++(2M)
    assert "DPM-Solver++(2M)-5" in caption and " s on the server" in caption
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    page.click("#s-compare")  # DDPM over all T steps and DDIM-50 (or T) with the same seed
    page.wait_for_function("document.querySelectorAll('#s-out figure:not(.live)').length === 2",
                           timeout=300_000)
    assert page.inner_text("#s-out figure:nth-child(1) figcaption").startswith("DDPM-")
    assert page.inner_text("#s-out figure:nth-child(2) figcaption").startswith("DDIM-")
    shot(page, "#sampler", "sampler", tmp_path)
    assert page.errors == []


def test_a_latent_slider_changes_the_decoded_image(page, tmp_path):
    before = page.get_attribute("#l-decoded", "src")
    page.focus("#z0")
    for _ in range(30):  # the keyboard alone moves the slider: +1.5 on z0
        page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#l-decoded').src !== {json.dumps(before)}")
    assert page.locator("#l-preds tr").count() == 4  # header + three classifiers
    page.fill("#l-dims", "0,1")
    page.click("#l-traverse")
    page.wait_for_selector("#l-traversal:not([hidden])")
    shot(page, "#latent", "latent", tmp_path)
    assert page.errors == []


def test_an_attack_runs_and_shows_predictions(page, tmp_path):
    page.fill("#a-index", "3")
    page.select_option("#a-attack", "pgd")
    page.locator("#a-eps").fill("0.1")
    page.click("#a-go")
    page.wait_for_selector(".attack-grid")
    cards = page.locator(".attack-grid > div")
    assert cards.count() == 3  # one per classifier, beside the original
    text = page.inner_text(".attack-grid")
    assert "clean:" in text and "attacked:" in text and "ε=0.1" in text
    assert page.locator(".attack-grid canvas").count() == 3  # the amplified perturbations
    # "fooled" only where the clean answer was right: a wrong clean answer is said as such
    label = page.locator(".attack-grid figcaption").first.inner_text().removeprefix("original: ")
    for i in range(cards.count()):
        card = cards.nth(i).inner_text()
        clean = card.split("clean: ")[1].splitlines()[0].rsplit(" ", 1)[0]
        verdicts = [v for v in ("(wrong before the attack too)", "(still right)", "(fooled)") if v in card]
        assert verdicts == (["(wrong before the attack too)"] if clean != label else verdicts[:1]), card
        assert len(verdicts) == 1, card
    shot(page, "#attack", "attack", tmp_path)
    assert page.errors == []


def test_bad_input_shows_a_readable_error(page):
    page.fill("#s-n", "500")  # caught in the page
    page.click("#s-go")
    assert page.inner_text("#sampler-error") == "Error: Images must be a whole number from 1 to 64"
    page.fill("#l-index", "")  # an empty number field
    page.click("#l-load")
    assert "Test image must be a whole number" in page.inner_text("#latent-error")
    # the API's answers in words: a model-level 400, and pydantic's 422 as "field: message"
    page.fill("#l-dims", "0,99")
    page.click("#l-traverse")
    page.wait_for_function("document.querySelector('#latent-error').innerText.includes('dims')")
    assert page.inner_text("#latent-error").startswith("Error: dims must be below the latent size")
    page.fill("#l-dims", ",".join(["0"] * 40))
    page.click("#l-traverse")
    page.wait_for_function("document.querySelector('#latent-error').innerText.includes('at most')")
    assert page.inner_text("#latent-error").startswith("Error: dims: List should have at most 32 items")
    # only the API's 4xx answers were logged by the browser
    assert all("status of 4" in e for e in page.errors), page.errors


def test_the_page_asks_for_the_token_when_the_server_wants_one(server, browser):
    context = browser.new_context(bypass_csp=True)  # for wait_for_function
    pg = context.new_page()
    pg.goto(URL + "/secured/")  # the page itself is public
    pg.wait_for_function("document.querySelector('#status').innerText.includes('token')")
    assert pg.is_visible("#token-needed")
    pg.fill("#token", TOKEN)
    pg.click("#token-form button")
    pg.wait_for_function("document.querySelector('#status').innerText === 'DDPM loaded, VAE loaded'")
    pg.wait_for_selector("#l-preds tr")
    context.close()


def test_phone_width_has_no_sideways_scroll(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = context.new_page()
    pg.goto(URL + "/")
    pg.wait_for_selector("#l-preds tr")
    assert pg.evaluate("document.documentElement.scrollWidth") <= 391
    folder = Path(os.environ.get("HW4_WEB_SHOTS") or tmp_path)
    pg.screenshot(path=str(folder / "phone.png"))
    context.close()
