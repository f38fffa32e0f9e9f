"""The Gradio demo: through Gradio's Python client (fast) and in a real headless Chromium (slow)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = "resnet18_w16_cifar10_lga"

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed: pip install -e ".[demo]"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def running_app():
    from lga_zoo.demo import build_app

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    app = build_app([MODEL, "resnet18_w16_cifar10_standard"])
    port = free_port()
    app.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_the_app_through_gradios_client_matches_explain(running_app):
    from gradio_client import Client, handle_file
    from PIL import Image

    import lga_zoo

    example = REPO / "examples" / "frog.jpg"
    client = Client(running_app, verbose=False)
    summary, gallery, figure, numbers = client.predict(
        handle_file(str(example)), [MODEL], "gradient (grad)", "noise", api_name="/run"
    )
    exp = lga_zoo.load(MODEL).explain(Image.open(example), stability=True)
    row = numbers[MODEL]
    assert row["predicted"] == "frog" == exp.label_of(int(exp.predicted[0]))
    for key in ("noise", "attack"):
        assert row["stability"][key] == pytest.approx(exp.stability[key][0].item(), abs=1e-4)
    assert 0 <= row["topk_after_perturbation"] <= 1
    assert f"{row['stability']['attack']:.2f}" in summary and len(gallery) == 1 and figure


def test_a_bad_upload_is_a_message_not_a_traceback(running_app, tmp_path):
    from gradio_client import Client, handle_file

    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    client = Client(running_app, verbose=False)
    with pytest.raises(Exception, match="not an image Pillow can read"):
        client.predict(handle_file(str(fake)), [MODEL], "gradient (grad)", "none", api_name="/run")


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
def test_the_demo_in_a_real_browser(tmp_path):
    """lga-zoo demo as a user starts it; headless Chromium uploads an example, runs it, waits for the
    maps, saves a screenshot; SIGTERM stops the server within 10 seconds."""
    if _chromium() is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    server_log = open(tmp_path / "server.log", "wb")  # closed in the finally block below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lga_zoo.cli",
            "demo",
            "--port",
            str(port),
            "--models",
            f"{MODEL},resnet18_w16_cifar10_standard",
        ],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        wait.until(conditions.presence_of_element_located((By.ID, "run")))
        assert MODEL in driver.page_source and "resnet18_w16_cifar10_standard" in driver.page_source
        upload = driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]")
        upload.send_keys(str(REPO / "examples" / "ship.jpg"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preview img"))  # the upload arrived
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(lambda d: "stability: attack" in d.find_element(By.ID, "summary").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#figure img"))
        summary = driver.find_element(By.ID, "summary").text
        assert "ship" in summary and "0." in summary
        driver.save_screenshot(str(tmp_path / "demo.png"))
        assert (tmp_path / "demo.png").stat().st_size > 10_000
        if os.environ.get("LGA_ZOO_DEMO_SCREENSHOT"):  # the README's picture is made this way
            shutil.copyfile(tmp_path / "demo.png", os.environ["LGA_ZOO_DEMO_SCREENSHOT"])
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(signal.SIGTERM)
        started = time.time()
        try:
            server.wait(timeout=10)
        finally:
            server.kill()
            server_log.close()
        assert time.time() - started < 10


def test_the_space_folder_imports_the_package_and_declares_gradio():
    import yaml

    space = REPO / "spaces" / "lga-zoo-demo"
    app = (space / "app.py").read_text()
    assert "from lga_zoo.demo import build_app" in app and "def analyse" not in app
    front = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert "lga-zoo[demo]" in (space / "requirements.txt").read_text()


def test_uploads_keep_their_mode_and_huge_ones_are_refused_before_decoding(tmp_path):
    import numpy as np
    from PIL import Image

    from lga_zoo.demo import read_upload

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(deep)
    assert read_upload(str(deep)).mode in ("I;16", "I")  # not clipped to white by a convert("RGB")
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 4000)).save(huge)
    with pytest.raises(ValueError, match="5000x4000 pixels.*4096x4096"):
        read_upload(str(huge))
