"""Screenshots of a Snakemake HTML report, one per view, with headless Chromium.

The report is a single-page app: a copy of it gets a small script that opens
the view named in the address's fragment (a category with one of its results
shown, or the overview), and Chromium takes a screenshot of each. Nothing is
fetched from the network.

Usage::

    snakemake --report report.html
    python docs/screenshot_report.py report.html docs/figures/report [--size 1500x1000]

writes ``overview.png`` and one PNG per report item (named after its file)
into the output folder, and prints what it wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

OPEN_VIEW = """
<script>
// React renders the app asynchronously: wait until it exists, then open the view
var openView = setInterval(function () {
  if (typeof app === "undefined" || !app) { return; }
  clearInterval(openView);
  var path = decodeURIComponent(location.hash.slice(1));
  if (!path) { return; }
  var entry = results[path];
  var kinds = {"image/png": "img", "image/svg+xml": "img", "image/jpeg": "img",
               "text/html": "html", "application/pdf": "pdf"};
  app.setView({navbarMode: "resultinfo", resultPath: path, content: kinds[entry.mime_type],
               contentPath: entry.data_uri});
}, 50);
</script>
"""

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def report_items(html: str) -> dict:
    """The report's results, as the page's ``var results = {...};`` holds them."""
    match = re.search(r"var results = (\{.*?\});\n", html, flags=re.S)
    if match is None:
        raise SystemExit("no 'var results' in the report: not a Snakemake HTML report?")
    return json.loads(match.group(1))


def screenshot(browser: str, page: Path, fragment: str, out: Path, size: str) -> None:
    url = page.as_uri() + ("#" + quote(fragment, safe="") if fragment else "")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--hide-scrollbars",
                    f"--window-size={size.replace('x', ',')}", "--virtual-time-budget=8000",
                    f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="The report, from snakemake --report X.html.")
    parser.add_argument("output", type=Path, help="Folder for the screenshots.")
    parser.add_argument("--size", default="1500x1000", help="Window size, WIDTHxHEIGHT.")
    args = parser.parse_args(argv)
    browser = next((b for b in CHROMIUM if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium found (Debian: apt-get install chromium)")
    html = args.report.read_text()
    items = report_items(html)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        end = html.rindex("</body>")  # the page's own (the scripts hold such strings too)
        page.write_text(html[:end] + OPEN_VIEW + html[end:])
        shots = [("", "overview")] + [(path, Path(path).name) for path in items]
        for fragment, name in shots:
            out = args.output / f"{name.replace('.', '_')}.png"
            screenshot(browser, page, fragment, out, args.size)
            print(f"{out}: {fragment or 'the overview'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
