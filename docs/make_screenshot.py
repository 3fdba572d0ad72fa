"""docs/report.png, the README's picture of report.html: `headstart demo`'s report rendered by headless
Chromium, as the report test renders it (Debian's chromium driven by Playwright).

    headstart demo --workdir /tmp/demo && python docs/make_screenshot.py /tmp/demo/run/report.html
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parent / "report.png"


def main() -> None:
    page_file = Path(sys.argv[1]).resolve()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 1400})
        page.goto(page_file.as_uri())
        page.screenshot(path=str(OUT), clip={"x": 0, "y": 0, "width": 900, "height": 1400})
        browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
