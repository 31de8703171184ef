"""The HTML leaderboard (rbench.report.html) in a real headless Chromium, driven through
selenium: the page rbench leaderboard writes loads from a file:// URL with its plots and no
request elsewhere, a click on a column header sorts the rows (again: the other way), the select
boxes filter by suite, protocol and method, and text from records stays text.

Needs Debian's chromium and chromium-driver (`make browser` installs them) and selenium (in the
test extra); skipped with that reason where they are missing. Marked slow (a browser start and a
board with plots, about 30 s on a 2-core CPU): `make test` runs them, `make test-fast` does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_leaderboard import make_record, write

from rbench.report.html import render_page
from rbench.report.leaderboard import build

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
HOSTILE = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run")
FLAGS += ("--disable-background-networking", "--disable-component-update", "--disable-sync")


def test_record_text_is_escaped_in_the_page_source():
    page = render_page(
        {
            "groups": [],
            "rows": [{"suite": "digits", "method": HOSTILE, "protocol": "quick", "flags": HOSTILE}],
            "skipped": [f"x.json: {HOSTILE}"],
        }
    )
    assert "<img src=x" not in page and "<script>window" not in page
    assert "&lt;img src=x onerror=window.pwned=1&gt;" in page
    assert page.count("<script>") == 1  # the page's own, allowed by its hash in the policy
    assert "default-src 'none'" in page and "http://" not in page and "https://" not in page


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    """A leaderboard of synthetic records: two protocols, a control, seeds, a flagged row, a
    row at another budget (the compute axis), a record with hostile text, and a broken file."""
    root = tmp_path_factory.mktemp("records")
    records = [make_record("dense", 1, aa=60), make_record("dense-ft", 1, aa=62)]
    records += [
        make_record("magnitude", r, seed=s, aa=a - r)
        for r in (4, 16)
        for s, a in [(0, 50), (1, 56)]
    ]
    records += [
        make_record("hydra", r, aa=47 - r, flags={"robust_above_clean": "x"}) for r in (4, 16)
    ]
    records += [
        make_record("cstar", 4, aa=40, protocol="quick"),
        make_record("hydra", 4, aa=35, protocol="quick"),
    ]
    records += [make_record("magnitude", 16, aa=20, budget=1.0)]
    hostile = make_record("random", 4, aa=30)
    hostile["method"]["config_nondefault"] = {"note": HOSTILE}
    records.append(hostile)
    write(root, records)
    (root / "broken<b>.json").write_text("{")
    out = tmp_path_factory.mktemp("board")
    build([root], out, plots=True)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        pytest.skip(
            "no headless Chromium: `make browser` installs Debian's chromium and chromium-driver"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is missing: pip install -e '.[test]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1400,1000")
    # the DevTools network events and the console, to see every request and every refusal
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_board(browser, board: Path, fragment: str = ""):
    browser.get("about:blank")  # a fresh load each time, never a same-page fragment change
    browser.get((board / "index.html").as_uri() + fragment)
    return browser


def every_row_table(browser):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, "section[data-all-rows] table")


def column(browser, table, name: str) -> list[str]:
    """The cells of column `name` of the visible rows, in page order."""
    heads = [
        th.get_attribute("textContent").strip()
        for th in table.find_elements("css selector", "thead th")
    ]
    index = heads.index(name)
    return browser.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).filter(r => !r.hidden)"
        ".map(r => r.cells[arguments[1]].textContent.trim());",
        table,
        index,
    )


def header(table, name: str):
    heads = table.find_elements("css selector", "thead th")
    return next(th for th in heads if th.get_attribute("textContent").strip() == name)


def number(text: str) -> float:
    return float(text.split(" ")[0])


@pytest.mark.slow  # a browser and a board with plots: about 30 s together
def test_the_page_loads_its_plots_and_nothing_else(browser, board):
    open_board(browser, board)
    assert browser.title == "rbench leaderboard"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth]);"
    )
    named = {
        p
        for g in json.loads((board / "leaderboard.json").read_text())["groups"]
        for p in g["plots"]
    }
    assert {src for src, _ in images} >= {f"plots/{p}" for p in named} and named
    assert any("compute-axis" in src for src, _ in images)  # the plot outside the ranked tables
    assert all(width for _, width in images), images  # every relative link resolved
    events = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    page = (board / "index.html").as_uri()
    requests = [  # what the page asked for (not the browser's own start page)
        e["params"]["request"]["url"]
        for e in events
        if e["method"] == "Network.requestWillBeSent"
        and e["params"].get("documentURL", "").startswith(page)
    ]
    assert page in requests and any(url.endswith(".png") for url in requests)
    assert all(url.startswith(("file://", "about:", "data:")) for url in requests), requests
    # no console error: the policy let the page's own style and script run, and refused nothing
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert browser.execute_script("return window.pwned === undefined;")
    assert HOSTILE in browser.page_source.replace("&lt;", "<").replace("&gt;", ">")


@pytest.mark.slow
def test_clicking_a_header_sorts_the_column_and_clicking_again_reverses_it(browser, board):
    open_board(browser, board)
    table = every_row_table(browser)
    before = column(browser, table, "AutoAttack %")
    header(table, "AutoAttack %").click()
    ascending = [number(t) for t in column(browser, table, "AutoAttack %")]
    assert ascending == sorted(ascending) and sorted(ascending) == sorted(number(t) for t in before)
    assert header(table, "AutoAttack %").get_attribute("aria-sort") == "ascending"
    header(table, "AutoAttack %").click()
    descending = [number(t) for t in column(browser, table, "AutoAttack %")]
    assert descending == sorted(ascending, reverse=True)
    # text columns sort alphabetically; the other columns' cells move with their rows
    header(table, "method").click()
    methods = column(browser, table, "method")
    assert methods == sorted(methods)
    rows = json.loads((board / "leaderboard.json").read_text())["rows"]
    expected = sorted((r["method"], f"{r['ratio']:g}") for r in rows)
    assert sorted(zip(methods, column(browser, table, "ratio"), strict=True)) == expected
    # a ranked table sorts too: its rank column, the control first
    ranked = browser.find_element(
        "css selector", "section[data-board-section]:not([data-all-rows]) table"
    )
    header(ranked, "AutoAttack %").click()
    values = [number(t) for t in column(browser, ranked, "AutoAttack %")]
    assert values == sorted(values)
    header(ranked, "rank").click()
    assert column(browser, ranked, "rank")[0] == "control"


@pytest.mark.slow
def test_the_select_boxes_filter_by_method_protocol_and_suite(browser, board):
    from selenium.webdriver.support.ui import Select

    open_board(browser, board)
    table = every_row_table(browser)
    total = len(column(browser, table, "method"))
    Select(browser.find_element("id", "filter-method")).select_by_value("magnitude")
    shown = column(browser, table, "method")
    assert shown and set(shown) == {"magnitude"}
    assert browser.find_element("id", "shown").text == f"{len(shown)} of {total} configurations"
    assert "method=magnitude" in browser.current_url
    ranked = browser.find_elements(
        "css selector", "section[data-board-section]:not([data-all-rows])"
    )
    visible = [s for s in ranked if s.is_displayed()]
    assert len(visible) == 1  # the quick table has no magnitude row: hidden
    names = [
        t.strip().split(" (")[0]
        for t in column(browser, visible[0].find_element("css selector", "table"), "method")
    ]
    assert set(names) == {"magnitude"}
    Select(browser.find_element("id", "filter-method")).select_by_value("")
    Select(browser.find_element("id", "filter-protocol")).select_by_value("quick")
    assert set(column(browser, table, "method")) == {"cstar", "hydra"}
    assert [s.get_attribute("data-protocol") for s in ranked if s.is_displayed()] == ["quick"]
    Select(browser.find_element("id", "filter-suite")).select_by_value("digits")
    assert len(column(browser, table, "method")) == 2


@pytest.mark.slow
def test_a_linked_view_opens_filtered(browser, board):
    open_board(browser, board, "#method=hydra&protocol=standard")
    table = every_row_table(browser)
    assert set(column(browser, table, "method")) == {"hydra"}
    assert set(column(browser, table, "protocol")) == {"standard n=100"}
    flags = column(browser, table, "flags")
    assert flags and all("unreliable" in f and "robust_above_clean" in f for f in flags)
    assert all("[" in ci and "]" in ci for ci in column(browser, table, "95% CI"))
