"""report.html in headless Chromium: a full-page screenshot that is not blank, and no broken image."""

from __future__ import annotations

import re

import pytest

from breastfusion.report.render import check_report, embedded_images, find_chromium

from .conftest import read_report

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="no chromium binary (Debian: apt-get install -y chromium)")


def _break_first_image(html: str) -> str:
    return re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,bm90IGEgcG5n"', html, count=1)


def test_embedded_images_are_checked_without_a_browser(fake_run):
    run, _ = fake_run
    html = read_report(run)
    assert [problem for _, problem in embedded_images(html)] == [None] * 4
    broken = embedded_images(_break_first_image(html))
    assert broken[0][0] == "ROC curves" and "does not decode" in broken[0][1]
    assert embedded_images('<img alt="x" src="roc.png">')[0][1].startswith("source is not an embedded PNG")


@needs_chromium
def test_report_renders_in_headless_chromium(fake_run, tmp_path):
    run, _ = fake_run
    result = check_report(run / "report.html", tmp_path / "shot.png")
    assert result.ok, result.as_dict()
    assert result.n_images == 4 and all(w > 500 for w in result.browser_widths)
    assert result.screenshot_size[1] == result.page_height > 2000  # the whole page, not one viewport
    broken = tmp_path / "broken.html"
    broken.write_text(_break_first_image(read_report(run)), encoding="utf-8")
    bad = check_report(broken, tmp_path / "broken.png")
    assert not bad.ok and bad.browser_widths[0] == 0 and bad.bad_images[0].startswith("ROC curves")


@needs_chromium
def test_a_blank_page_is_caught(tmp_path):
    page = tmp_path / "blank.html"
    page.write_text("<!doctype html><html><body style='background:#fff'></body></html>")
    result = check_report(page, tmp_path / "blank.png")
    assert result.blank and not result.ok
