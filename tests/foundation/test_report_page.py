"""`iqa-plugins report`: reading score files, and the page itself in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from iqa_plugins.report import read_score_file, render_report

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
DISTORTIONS = ("JPEG", "Pixelate", "White noise")
EXPERTS = ("hazy", "noisy", "snowy", "low-light")
META = {"format": "iqa-plugins-scores", "version": 1, "metrics": [
    {"name": "drexperts", "options": {}, "explain": True, "score_range": [0.0, 1.0], "lower_better": False,
     "meaning": "mean of MS-SSIM, VIF and FSIM"},
    {"name": "exiqa", "options": {}, "explain": True, "score_range": [0.0, 1.0], "lower_better": False}]}


@pytest.fixture
def score_file(tmp_path):
    """Seven images (one deleted after scoring), two metrics with explanations, two skipped files."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = []
    for i in range(7):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8)).save(path)
        row = {"path": str(path), "drexperts": float(rng.random()), "exiqa": float(rng.random())}
        shares = rng.dirichlet(np.ones(len(EXPERTS)))
        row.update({f"drexperts:share:{e}": float(s) for e, s in zip(EXPERTS, shares)})
        row.update({f"exiqa:p:{d}": float(p) for d, p in zip(DISTORTIONS, rng.choice([0.02, 0.05, 0.4, 0.8], 3))})
        rows.append(row)
    (folder / "img6.png").unlink()  # moved away after scoring: the page says so instead of failing
    scores = tmp_path / "scores.jsonl"
    scores.write_text("\n".join(json.dumps(r) for r in [{"_meta": META}, *rows]) + "\n")
    (tmp_path / "scores.jsonl.errors.jsonl").write_text(
        json.dumps({"path": str(folder / "broken.jpg"), "reason": "cannot identify image file"}) + "\n"
        + json.dumps({"path": str(folder / "tiny.png"), "reason": "image is 4x4, smaller than --min-side 16"}) + "\n")
    return scores, rows


def test_csv_with_sidecar_reads_like_jsonl(score_file, tmp_path):
    scores, rows = score_file
    as_csv = tmp_path / "scores.csv"
    with as_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "scores.csv.meta.json").write_text(json.dumps(META))
    from_jsonl, from_csv = read_score_file(scores), read_score_file(as_csv)
    assert [m["name"] for m in from_csv.metrics] == [m["name"] for m in from_jsonl.metrics] == ["drexperts", "exiqa"]
    assert [float(r["exiqa"]) for r in from_csv.rows] == [r["exiqa"] for r in from_jsonl.rows]
    assert len(from_jsonl.errors) == 2 and from_csv.errors == []


def test_files_without_metadata_take_metrics_from_their_columns(tmp_path):
    legacy = tmp_path / "old.csv"
    legacy.write_text("path,score,share:hazy,share:noisy\n/a.png,0.5,0.7,0.3\n/b.png,0.25,0.4,0.6\n")
    scores = read_score_file(legacy)
    assert scores.metrics == [{"name": "score"}]
    page = render_report(scores)
    assert page.count("<tr data-name=") == 2 and "hazy 0.70" in page and "range 0.25 to 0.5" not in page


def test_page_is_self_contained(score_file):
    page = render_report(read_score_file(score_file[0]))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert page.count('src="data:image/jpeg;base64,') == 6 and "not readable" in page
    assert "cannot identify image file" in page and "smaller than --min-side" in page


def _chromium():
    """A Selenium driver on Debian's chromium + chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser` installs them as root)")
    return webdriver, Service, browser, driver


def test_report_in_headless_chromium(score_file, tmp_path, python_cmd):
    webdriver, Service, browser, driver_path = _chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    scores, rows = score_file
    page = tmp_path / "report.html"
    done = subprocess.run([*python_cmd, "-m", "iqa_plugins", "report", str(scores), "-o", str(page)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "report on 7 images (2 skipped)" in done.stdout

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1100"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        console = driver.get_log("browser")
        assert [entry for entry in console if entry["level"] in ("SEVERE", "WARNING")] == [], console
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        urls = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
        assert page.as_uri() in urls  # (chrome:// pages are the browser's own new-tab page, not network)
        assert not [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")], urls

        def shown():
            return [r for r in driver.find_elements(By.CSS_SELECTOR, "#scores tbody tr") if r.is_displayed()]

        def column(name):
            return [float(r.get_attribute(f"data-m{['drexperts', 'exiqa'].index(name)}")) for r in shown()]

        assert len(shown()) == 7
        assert column("drexperts") == sorted((r["drexperts"] for r in rows), reverse=True)  # best first
        header = driver.find_element(By.CSS_SELECTOR, 'th[data-key="m1"]')
        header.click()
        assert column("exiqa") == sorted((r["exiqa"] for r in rows), reverse=True)
        header.click()
        assert column("exiqa") == sorted(r["exiqa"] for r in rows)
        assert header.get_attribute("aria-sort") == "ascending"

        Select(driver.find_element(By.ID, "distortion")).select_by_value("JPEG")
        with_jpeg = sorted(r["path"] for r in rows if r["exiqa:p:JPEG"] >= 0.1)
        assert 0 < len(with_jpeg) < 7
        assert sorted(r.find_element(By.CSS_SELECTOR, "td[title]").get_attribute("title") for r in shown()) == with_jpeg
        assert driver.find_element(By.ID, "count").text == f"{len(with_jpeg)} of 7 images shown"
        Select(driver.find_element(By.ID, "distortion")).select_by_value("")
        driver.find_element(By.ID, "search").send_keys("img3")
        assert len(shown()) == 1
        driver.find_element(By.ID, "search").clear()
        driver.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
        assert len(shown()) == 7
        assert len(driver.find_elements(By.CSS_SELECTOR, "#errors tbody tr")) == 2

        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        with Image.open(shot) as image:
            assert image.size[0] >= 1000 and np.asarray(image.convert("L")).std() > 10  # not a blank page
        assert driver.get_log("browser") == []
    finally:
        driver.quit()
