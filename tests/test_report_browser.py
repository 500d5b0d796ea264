"""The results page in a real browser: Debian's chromium, headless, through its chromedriver (Selenium). The page
opens from disk with no console error and no network request; the filters show the counts the records give; the
order view names the prompts that flip; one prompt side by side shows all its orders. Screenshots of each view go
to $STEER_EVAL_SCREENSHOTS when set (docs/report.md's images were made that way), else to the test's folder."""
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from benchmarks.report_page import chromium
from steer_eval.report.page.build import write_report
from steer_eval.report.page.samples import SampleRule, order_names
from steer_eval.runs.records import append_records, load_records
from tests.test_report_page import EVERYTHING, REAL_GRID, make_records

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI installs the browser (.ci/run); elsewhere a machine without it skips these tests, saying why.
if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
    pytest.skip("no chromium/chromedriver (Debian: apt install chromium chromium-driver)", allow_module_level=True)

pytestmark = pytest.mark.xdist_group("browser")


@pytest.fixture(scope="module")
def browser():
    driver = chromium(network_log=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("STEER_EVAL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(driver, path: Path):
    driver.get_log("browser"), driver.get_log("performance")  # start from empty logs
    driver.get(path.resolve().as_uri())
    driver.find_element("id", "sample-count")  # the script has run: it fills the count
    return driver


def network_requests(driver) -> list[str]:
    """Every URL the page asked for beyond itself (file://) and its own figures (data: URLs, inside the file)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert any(url.startswith("file://") for url in urls)  # the log does record requests
    return [url for url in urls if not url.startswith(("file://", "data:"))]


def problems(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def choose(driver, name: str, value: str) -> str:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("css selector", f"#filters [name='{name}']")).select_by_value(value)
    return driver.find_element("id", "sample-count").text


def visible(driver, selector: str) -> int:
    return len([element for element in driver.find_elements("css selector", selector) if element.is_displayed()])


@pytest.fixture(scope="module")
def synthetic_page(tmp_path_factory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("page")
    records_path = folder / "grid" / "records.jsonl"
    append_records(records_path, make_records())
    return write_report([records_path], ["synthetic"], folder / "page.html", EVERYTHING), load_records(records_path)


def test_filters_show_the_counts_the_records_give(browser, synthetic_page):
    page, records = synthetic_page
    open_page(browser, page)
    browser.get(page.resolve().as_uri() + "#samples")
    total = len(records)
    assert browser.find_element("id", "sample-count").text.startswith(f"{total} of {total} embedded samples match")
    assert visible(browser, "#sample-list .sample") == 20  # one page

    def count(**chosen):
        return sum(all(check(record) for check in chosen.values()) for record in records)

    text = choose(browser, "behavior", "words_10_50")
    assert text.startswith(f"{count(b=lambda r: 'words_10_50' in r.behaviors)} of {total}")
    text = choose(browser, "verdict", "fails")
    expected = count(b=lambda r: r.per_behavior.get("words_10_50") is False)
    assert text.startswith(f"{expected} of {total}")
    text = choose(browser, "control", "text")
    expected = count(b=lambda r: r.per_behavior.get("words_10_50") is False, c=lambda r: r.control_method == "text")
    assert text.startswith(f"{expected} of {total}") and expected > 0
    assert visible(browser, "#sample-list .sample") == min(expected, 20)
    badges = browser.find_elements("css selector", "#sample-list .badge.fails[data-behavior='words_10_50']")
    assert badges and all("words, needs 10-50" in badge.text for badge in badges)
    text = choose(browser, "k", "2")
    expected = count(b=lambda r: r.per_behavior.get("words_10_50") is False, c=lambda r: r.control_method == "text",
                     k=lambda r: len(r.behaviors) == 2)
    assert text.startswith(f"{expected} of {total}")
    browser.execute_script("document.getElementById('filters').reset(); "
                           "document.getElementById('filters').dispatchEvent(new Event('change'))")
    search = browser.find_element("css selector", "#filters [name='text']")
    search.send_keys("window.pwned")  # the hostile response: shown as text, never run
    expected = count(p=lambda r: "window.pwned" in r.response)
    assert browser.find_element("id", "sample-count").text.startswith(f"{expected} of {total}")
    assert browser.execute_script("return window.pwned === undefined")
    assert "</script><script>window.pwned=1</script>" in browser.find_element("css selector", ".response").text
    browser.find_element("css selector", "#sample-pager [name='next']")
    assert problems(browser) == [] and network_requests(browser) == []


def test_order_view_names_the_flipping_prompts(browser, synthetic_page):
    page, records = synthetic_page
    open_page(browser, page)
    browser.get(page.resolve().as_uri() + "#orders")
    rows = browser.find_elements("css selector", ".heatmap tr.row")
    assert len(rows) == 1  # the first setting (steering, k = 2): one combination
    cells = rows[0].find_elements("css selector", "td.cell")
    assert [cell.get_attribute("title").split(":")[0] for cell in cells] == ["german>words_10_50",
                                                                               "words_10_50>german"]
    flips = {(r.prompt_id) for r in records if r.control_method == "steering" and len(r.behaviors) == 2
             and r.followed} & {r.prompt_id for r in records if r.control_method == "steering"
                                and len(r.behaviors) == 2 and not r.followed}
    listed = browser.find_elements("css selector", "#order-detail tr.flip")
    assert len(listed) == len(flips) == 4
    assert {row.find_element("css selector", ".label").text for row in listed} == flips
    listed[0].find_element("css selector", "a.case-link").click()
    assert browser.find_element("id", "side").is_displayed()
    assert visible(browser, "#case-view tr.order-row") == 2


def test_a_real_grid_opens_cleanly_and_shows_each_view(browser, tmp_path, screenshots):
    page = write_report([REAL_GRID], ["grid_2actors"], tmp_path / "grid_2actors.html", SampleRule())
    open_page(browser, page)
    browser.save_screenshot(str(screenshots / "report_overview.png"))
    assert browser.find_elements("css selector", ".figures img")  # the figures, as data: SVG
    heights = browser.execute_script("return [...document.querySelectorAll('.figures img')].map(i => i.naturalHeight)")
    assert heights and all(height > 100 for height in heights)  # every figure decoded
    for view in ("orders", "samples"):
        browser.get(page.resolve().as_uri() + "#" + view)
        assert browser.find_element("id", view).is_displayed()
        browser.save_screenshot(str(screenshots / f"report_{view}.png"))
    # one prompt, side by side: every order of a pair, in each control method
    pair = browser.execute_script("return [...document.querySelectorAll('#case-select option')]"
                                  ".map(o => o.value).find(v => v.includes('+'))")
    browser.get(page.resolve().as_uri() + "#case=" + quote(pair))
    assert browser.find_element("id", "case-select").get_attribute("value") == pair
    rows = browser.find_elements("css selector", "#case-view tr.order-row")
    assert sorted(row.get_attribute("data-order") for row in rows) == sorted(order_names(pair.split("|")[0]))
    header = [cell.text for cell in browser.find_elements("css selector", "#case-view table.side tr:first-child th")]
    assert header == ["order", "hybrid · composition", "steering · composition", "text"]
    for row in rows:  # every cell answered, verdict badges in the same behaviour order
        for cell in row.find_elements("css selector", "td"):
            assert [b.get_attribute("data-behavior") for b in cell.find_elements("css selector", ".badge")] == \
                pair.split("|")[0].split("+")
    browser.save_screenshot(str(screenshots / "report_side.png"))
    assert problems(browser) == []
    assert network_requests(browser) == []
