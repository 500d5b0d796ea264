"""The results page at scale: `steer-eval report` of a simulated k = 1..4 grid (the grid-scale benchmark's grids).

    python benchmarks/report_page.py [--prompts 91 9] [--grid DIR] [--out FILE]

For each N of --prompts: `steer-eval grid --backend simulate --model sim --k 1 2 3 4 --control-method steering
--num-prompts N` (10,948 evaluations a prompt: 91 prompts = 996,268 records), or the folder --grid names, then
`steer-eval report DIR --html PAGE` in a fresh process: wall time, that process's peak RSS, the page's size and the
records it embeds; then the seconds headless chromium takes to open the page and run its script, and its console
errors. Issue 27's bounds for a million records: a page of at most 25 MB, in at most 2 minutes and 1 GB.
Writes results/bench/report_page_<date>.json (or FILE) with the machine and the command, and prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["grid", "--backend", "simulate", "--model", "sim", "--k", "1", "2", "3", "4", "--control-method", "steering"]
# The report in a process of its own, which writes its own peak RSS (the grid before it is another process).
MEASURED = ("import json, resource, sys; from steer_eval.cli.main import main; code = main(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
            "sys.exit(code)")


def steer_eval(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "steer_eval.cli", *args], check=True, stdout=subprocess.DEVNULL)


def chromium(network_log: bool = False):
    """Debian's chromium, headless, through its chromedriver (Selenium), keeping the console log (and, with
    `network_log`, the performance log that lists every request); tests/test_report_browser.py drives it too."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", **({"performance": "ALL"} if network_log else {})})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


def open_in_chromium(page: Path) -> dict:
    """Seconds until the page's script has drawn every view, in headless chromium, and its console errors."""
    driver = chromium()
    try:
        started = time.monotonic()
        driver.get(page.resolve().as_uri())  # returns once the load event has fired: the script has run
        driver.find_element("id", "sample-count")
        seconds = time.monotonic() - started
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        return {"chromium_open_s": round(seconds, 2), "console_errors": len(errors)}
    finally:
        driver.quit()


def measure(grid: Path, work: Path) -> dict:
    page, rss = work / "report.html", work / "rss.json"
    records = sum(1 for _ in open(grid / "records.jsonl", "rb"))
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", MEASURED, str(rss), "report", str(grid), "--html", str(page), "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    text = page.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)[1]
    return {"records": records, "report_wall_s": round(wall, 1),
            "report_peak_rss_mb": round(json.loads(rss.read_text()) / 1024, 1),
            "page_mb": round(page.stat().st_size / 1e6, 2), "embedded_records": len(json.loads(data)["samples"]),
            **open_in_chromium(page)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="*", default=[91])
    parser.add_argument("--grid", default=None, help="an existing grid folder instead of --prompts")
    parser.add_argument("--out", default=None,
                        help="default: results/bench/report_page_<date>.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        grids = [(None, Path(args.grid))] if args.grid else [(n, work / f"grid_{n}") for n in args.prompts]
        for prompts, grid in grids:
            if prompts is not None:
                steer_eval(*GRID, "--num-prompts", str(prompts), "--output-dir", str(grid), "-q")
            row = {"prompts": prompts, **measure(grid, work)}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    out = Path(args.out or ROOT / "results" / "bench" / f"report_page_{datetime.date.today()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "date": str(datetime.date.today()),
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "python": platform.python_version()}, "rows": rows}, indent=2) + "\n")
    print("| records | report wall s | peak RSS MB | page MB | records embedded | opens in chromium s | console errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['records']:,} | {row['report_wall_s']} | {row['report_peak_rss_mb']} | {row['page_mb']} | "
              f"{row['embedded_records']:,} | {row['chromium_open_s']} | {row['console_errors']} |")


if __name__ == "__main__":
    main()
