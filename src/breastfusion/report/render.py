"""Check that a report renders in a real browser: headless Chromium screenshot, images decoded.

Used by the tests and ``bench/report_render.py``. Three checks:

1. every ``<img>`` of the HTML has a ``data:image/png;base64`` source that
   PIL decodes as a valid PNG (the report must open offline);
2. Chromium loads a copy of the page with a small script appended that, on
   ``load``, writes each image's ``naturalWidth`` and the page height into the
   DOM; ``--dump-dom`` returns it, so an image the browser could not decode
   shows as width 0;
3. a full-page screenshot (window as tall as the page) is not blank: enough
   non-white pixels and some contrast.

Chromium runs with a throw-away profile and no network features (no sync,
no component updates, no QUIC), so it reaches nothing outside the machine.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ChromiumNotFound", "RenderCheck", "find_chromium", "embedded_images", "check_report"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--mute-audio")
_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
_IMG = re.compile(r"<img\b[^>]*?\bsrc=\"([^\"]*)\"", re.IGNORECASE)
_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {height: Math.ceil(document.documentElement.scrollHeight),
             images: imgs.map(function (i) { return {alt: i.alt, complete: i.complete, width: i.naturalWidth}; })};
  var pre = document.createElement("pre"); pre.id = "render-probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
_PROBE_OUT = re.compile(r"<pre id=\"render-probe\">(.*?)</pre>", re.DOTALL)


class ChromiumNotFound(RuntimeError):
    """No Chromium binary: install Debian's ``chromium`` package (``apt-get install -y chromium``)."""


@dataclass
class RenderCheck:
    """What :func:`check_report` found (``ok`` when every check passed)."""

    chromium: str
    n_images: int
    bad_images: list[str] = field(default_factory=list)  # "alt: reason"
    browser_widths: list[int] = field(default_factory=list)
    page_height: int = 0
    screenshot: str = ""
    screenshot_size: tuple[int, int] = (0, 0)
    non_white_fraction: float = 0.0
    pixel_std: float = 0.0
    seconds: float = 0.0

    @property
    def blank(self) -> bool:
        """A screenshot with (almost) nothing on it."""
        return self.non_white_fraction < 0.01 or self.pixel_std < 5.0

    @property
    def ok(self) -> bool:
        return (not self.bad_images and not self.blank and len(self.browser_widths) == self.n_images
                and all(w > 0 for w in self.browser_widths))

    def as_dict(self) -> dict:
        return {**asdict(self), "blank": self.blank, "ok": self.ok}


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) binary, or ``None``."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def embedded_images(html: str) -> list[tuple[str, str | None]]:
    """``(alt, problem)`` of each ``<img>``: ``problem`` is ``None`` when its source is a valid embedded PNG."""
    from PIL import Image

    out = []
    for match in _IMG.finditer(html):
        tag = match.group(0)
        alt = (re.search(r"\balt=\"([^\"]*)\"", tag) or [None, "?"])[1]
        src = match.group(1)
        if not src.startswith("data:image/png;base64,"):
            out.append((alt, f"source is not an embedded PNG: {src[:40]!r}"))
            continue
        try:
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
                problem = None if image.format == "PNG" else f"decodes as {image.format}, not PNG"
        except (binascii.Error, ValueError, OSError) as exc:
            problem = f"does not decode: {exc}"
        out.append((alt, problem))
    return out


def _run(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="bf-chromium-") as profile:
        command = [chromium, *_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _probe(chromium: str, html: str, width: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bf-probe-") as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text(html.replace("</body>", _PROBE + "</body>") if "</body>" in html else html + _PROBE,
                        encoding="utf-8")
        done = _run(chromium, [f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
                               page.as_uri()], timeout)
    found = _PROBE_OUT.search(done.stdout)
    if not found:
        raise RuntimeError(f"chromium --dump-dom gave no probe result (exit {done.returncode}); "
                           f"stderr tail: {done.stderr[-500:]}")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def check_report(report: str | Path, screenshot: str | Path, *, width: int = 1280, max_height: int = 16000,
                 timeout: float = 120.0, chromium: str | None = None) -> RenderCheck:
    """Render ``report`` in headless Chromium, screenshot the whole page and check its images.

    Args:
        report: the HTML file.
        screenshot: the PNG to write.
        width: window width in CSS pixels.
        max_height: the screenshot's height is the page's, capped at this.
        timeout: seconds allowed to each Chromium call.
        chromium: the binary (default: :func:`find_chromium`).

    Raises:
        ChromiumNotFound: no Chromium binary.
        RuntimeError: Chromium ran but gave no result.
    """
    import time

    from PIL import Image

    chromium = chromium or find_chromium()
    if chromium is None:
        raise ChromiumNotFound("no chromium binary on PATH; install Debian's package: apt-get install -y chromium")
    started = time.perf_counter()
    html = Path(report).read_text(encoding="utf-8")
    images = embedded_images(html)
    probe = _probe(chromium, html, width, timeout)
    height = int(min(max(probe["height"], 200), max_height))
    screenshot = Path(screenshot).resolve()
    done = _run(chromium, [f"--window-size={width},{height}", f"--screenshot={screenshot}",
                           Path(report).resolve().as_uri()], timeout)
    if not screenshot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}); stderr tail: {done.stderr[-500:]}")
    with Image.open(screenshot) as shot:
        gray = np.asarray(shot.convert("L"), dtype=float)
        size = shot.size
    return RenderCheck(
        chromium=chromium, n_images=len(images), bad_images=[f"{alt}: {p}" for alt, p in images if p],
        browser_widths=[int(i["width"]) if i["complete"] else 0 for i in probe["images"]], page_height=height,
        screenshot=str(screenshot), screenshot_size=size, non_white_fraction=float((gray < 245).mean()),
        pixel_std=float(gray.std()), seconds=round(time.perf_counter() - started, 2))
