"""Drive the app in a real headless Chromium (Selenium + Debian's ``chromium`` / ``chromium-driver``).

Used by the browser test, and to take the README screenshot::

    python -m app.browser --screenshot docs/app.png [app options, e.g. --base ... --adapters_dir ...]

which starts the app on a free loopback port, uploads the first example photo, picks its adapter,
clicks Generate, waits for the result and saves a screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import time
from pathlib import Path
from typing import Optional, Sequence

INSTALL_HINT = (
    "the browser test needs Chromium and its WebDriver: apt-get install -y chromium chromium-driver "
    "(`make test` installs them when run as root), and selenium (pip install selenium)"
)


def chromium_driver(width: int = 1400, height: int = 1300):
    """A headless Chromium WebDriver. Raises ``RuntimeError`` with the install command when something is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise RuntimeError(f"selenium is not installed: {INSTALL_HINT}") from None
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver_path)) if p is None)
        raise RuntimeError(f"{missing} not found on PATH: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def edit_in_browser(
    driver,
    url: str,
    image: str | Path,
    instruction: str,
    *,
    adapter: Optional[str] = None,
    screenshot: Optional[str | Path] = None,
    timeout: float = 120.0,
) -> str:
    """Load the page, upload ``image``, type ``instruction``, pick ``adapter``, click Generate, wait for the
    edited image and return its ``src``; save a screenshot if asked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input_image input[type=file]")))
    upload.send_keys(str(Path(image).resolve()))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input_image img")))
    driver.find_element(By.CSS_SELECTOR, "#instruction textarea").send_keys(instruction)
    if adapter:
        driver.find_element(By.CSS_SELECTOR, "#adapter input").click()
        option = f"li[role=option][aria-label='{adapter}']"
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, option))).click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#adapter input").get_attribute("value") == adapter)
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    result = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#result img")))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#used").text.strip().startswith("Used:"))
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", result))
    if screenshot is not None:
        time.sleep(0.5)  # let the slider and the progress bar settle
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return result.get_attribute("src")


def image_bytes(driver, src: str) -> bytes:
    """The file behind an ``<img>`` ``src`` as the page received it (fetched by the page itself)."""
    import base64

    data_url = driver.execute_async_script(
        """const [src, done] = arguments;
        fetch(src).then(r => r.blob()).then(b => { const f = new FileReader(); f.onload = () => done(f.result);
        f.readAsDataURL(b); });""",
        src,
    )
    return base64.b64decode(data_url.split(",", 1)[1])


def example_rows(driver) -> list:
    """The clickable rows of the examples table."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#examples tbody tr, #examples .gallery-item")


def click_example(driver, index: int, *, timeout: float = 120.0) -> str:
    """Click row ``index`` of the examples table, wait until the edited image changes, return its ``src``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def current_src(d):
        found = d.find_elements(By.CSS_SELECTOR, "#result img")
        return found[0].get_attribute("src") if found else None

    before = current_src(driver)
    example_rows(driver)[index].click()
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: current_src(d) not in (None, before))
    result = driver.find_element(By.CSS_SELECTOR, "#result img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", result))
    return result.get_attribute("src")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot of the app editing its first example")
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--instruction", default=None, help="default: the first example's")
    ours, app_argv = parser.parse_known_args(argv)

    from app.app import create_app, launch_kwargs, parse_args
    from app.examples import load_examples

    args = parse_args(app_argv)
    if args.port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    engine, demo = create_app(args)
    example = load_examples(args.examples)[0]
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(args))
    driver = chromium_driver()
    try:
        adapter = example.adapter if example.adapter in engine.adapters else None
        edit_in_browser(
            driver, demo.local_url, example.image, ours.instruction or example.instruction, adapter=adapter,
            screenshot=ours.screenshot, timeout=600,
        )  # fmt: skip
    finally:
        driver.quit()
        demo.close()
    print(f"wrote {ours.screenshot}")


if __name__ == "__main__":
    main()
