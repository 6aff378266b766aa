"""Open a report in headless Chromium: a screenshot, and the page's JavaScript/console errors.

Debian's ``chromium`` package (``apt-get install -y chromium``) in ``--headless`` mode with
``--no-sandbox --disable-gpu`` (containers have neither a sandbox nor a GPU). Two runs:

* ``--screenshot`` writes a PNG of the page at ``window_size``;
* ``--dump-dom`` of a small wrapper page that loads the report in an iframe after installing
  ``error`` / ``unhandledrejection`` listeners and a ``console.error`` hook in it, then writes
  what it caught into the DOM -- so errors are read back exactly, not grepped from Chromium's
  log. Chromium's stderr is also scanned for ``Uncaught`` and ``CONSOLE`` error lines.

:func:`is_blank` says whether a screenshot shows (almost) nothing: one flat colour.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["find_chromium", "BrowserCheck", "check_page", "is_blank"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
          "--no-first-run", "--disable-dev-shm-usage", "--allow-file-access-from-files")


def find_chromium() -> str | None:
    env = os.environ.get("PORTRAIT_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class BrowserCheck:
    screenshot: Path
    errors: list[str] = field(default_factory=list)
    title: str = ""
    blank: bool = True
    log_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.log_errors and not self.blank


_WRAPPER = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<pre id="qc-errors">pending</pre><pre id="qc-title"></pre>
<iframe id="f" style="width:1200px;height:900px"></iframe>
<script>
var errs = [];
var f = document.getElementById('f');
function hook(w) {
  w.addEventListener('error', function (e) { errs.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || 'resource failed')); }, true);
  w.addEventListener('unhandledrejection', function (e) { errs.push('unhandledrejection: ' + e.reason); });
  var ce = w.console.error;
  w.console.error = function () { errs.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(w.console, arguments); };
}
f.addEventListener('load', function () {
  var d = f.contentDocument;
  var imgs = d ? d.images : [];
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) errs.push('image ' + i + ' did not decode: ' + (imgs[i].alt || '')); }
  document.getElementById('qc-title').textContent = d ? d.title : '';
  document.getElementById('qc-errors').textContent = JSON.stringify(errs);
});
f.src = %s;
// the iframe's window exists before its document loads: hook it as soon as it navigates
var t = setInterval(function () { try { if (f.contentWindow && !f.contentWindow.__qcHooked) { f.contentWindow.__qcHooked = 1; hook(f.contentWindow); } } catch (e) {} }, 1);
</script></body></html>
"""


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _log_errors(stderr: str) -> list[str]:
    out = []
    for line in stderr.splitlines():
        if "Uncaught" in line or re.search(r"CONSOLE\(\d+\).*(error|Error)", line) or ":ERROR:CONSOLE" in line:
            out.append(line.strip()[:300])
    return out


def check_page(html_path: str | os.PathLike, screenshot: str | os.PathLike, *, window_size: tuple[int, int] = (1280, 2400),
               chromium: str | None = None, timeout: float = 90.0) -> BrowserCheck:
    """Screenshot ``html_path`` and collect its errors (see the module doc)."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium)")
    page = Path(html_path).resolve()
    shot = Path(screenshot).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qc-chromium-") as tmp:
        base = [exe, *_FLAGS, f"--user-data-dir={tmp}/profile", "--enable-logging=stderr", "--v=0"]
        r1 = _run(base + [f"--screenshot={shot}", f"--window-size={window_size[0]},{window_size[1]}",
                          page.as_uri()], timeout)
        wrapper = Path(tmp) / "wrapper.html"
        wrapper.write_text(_WRAPPER % json.dumps(page.as_uri()))
        r2 = _run(base + ["--virtual-time-budget=15000", "--dump-dom", wrapper.as_uri()], timeout)
    res = BrowserCheck(shot)
    res.log_errors = _log_errors(r1.stderr) + _log_errors(r2.stderr)
    m = re.search(r'<pre id="qc-errors">(.*?)</pre>', r2.stdout, re.S)
    if m is None or m.group(1) == "pending":
        res.errors.append("the page did not finish loading in the browser")
    else:
        import html as _html
        res.errors.extend(json.loads(_html.unescape(m.group(1))))
    t = re.search(r'<pre id="qc-title">(.*?)</pre>', r2.stdout, re.S)
    res.title = t.group(1) if t else ""
    if shot.is_file():
        import cv2
        img = cv2.imread(str(shot))
        res.blank = img is None or is_blank(img)
    else:
        res.errors.append(f"no screenshot written (chromium exit {r1.returncode}: {r1.stderr.strip()[-200:]})")
    return res


def is_blank(img: np.ndarray, min_std: float = 4.0, min_colours: int = 16) -> bool:
    """True when an image is (almost) one flat colour: tiny spread and few distinct colours."""
    a = np.asarray(img)
    if a.size == 0:
        return True
    small = a[::4, ::4].reshape(-1, a.shape[-1] if a.ndim == 3 else 1)
    return float(small.std()) < min_std or len(np.unique(small, axis=0)) < min_colours
