"""The web page of a real ``serve`` process, in a real browser (headless Chromium driven by Playwright).

A model trained for one epoch on a few real gemstone classes is served; the browser uploads a real
photo (and a text file named .jpg) through the page's file chooser, and the page must show the
same top-1 class and probability as ``GemModel.classify``, and the error on the other card.
Screenshots at desktop and phone widths are saved in ``runs/screenshots/`` (look at them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import GEMSTONES, REPO, requires_gemstones
from lightning.pytorch import Trainer, seed_everything
from serving import start_server

from gem_lightning.data.cache import Cache
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.loader import Loader
from gem_lightning.inference.api import load_model
from gem_lightning.models import VGGSpec
from gem_lightning.training.module import GemClassifier

CLASSES = ("Amethyst", "Emerald", "Ruby", "Sapphire Blue", "Turquoise")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO / "runs" / "screenshots"

pytestmark = [
    pytest.mark.slow,
    requires_gemstones,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `apt-get install -y chromium` (.ci/run does)"),
]


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on five real classes (linked, not copied), 64 px, auto-crop on: the page test needs
    agreement with ``classify()``, not accuracy."""
    root = tmp_path_factory.mktemp("serve-page")
    for name in CLASSES:
        (root / "gems" / "train").mkdir(parents=True, exist_ok=True)
        (root / "gems" / "train" / name).symlink_to(GEMSTONES / "train" / name)
    seed_everything(0)
    datamodule = GemDataModule(
        str(root / "gems"), image_size=64, batch_size=16, loader=Loader(num_workers=0), cache=Cache(dir=str(root / "cache")), autocrop=True
    )
    model = GemClassifier(
        datamodule.class_names,
        64,
        preprocessing=datamodule.preprocessing,
        network=VGGSpec(channels=(8, 16, 32), pools=("max",) * 3, hidden_units=32),
    )
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(root / "gems.ckpt")
    return root / "gems.ckpt"


def test_the_page_shows_what_classify_says_for_a_real_photo(real_checkpoint, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'gem-lightning[test]' installs playwright")
    photo = sorted((GEMSTONES / "test" / "Ruby").glob("*.jpg"))[0]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("these are notes, not a photo")
    expected_class, expected_probability = load_model(real_checkpoint).classify(photo)[0]

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("GEM_LIGHTNING_API_KEY", None)
    server = start_server(real_checkpoint, tmp_path / "serve.log", env)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(server.url + "/")
            page.wait_for_selector("#model:has-text('5 classes')")
            page.set_input_files("#files", [str(photo), str(not_an_image)])
            good = page.locator(f".card.done[data-file='{photo.name}']")
            bad = page.locator(".card.error[data-file='notes.jpg']")
            good.wait_for(timeout=60_000)
            bad.wait_for(timeout=60_000)
            top = good.locator(".row.top")
            assert top.get_attribute("data-class") == expected_class
            assert float(top.get_attribute("data-probability")) == pytest.approx(expected_probability, abs=1e-5)
            assert top.locator(".cls").inner_text() == expected_class
            assert top.locator(".pct").inner_text() == f"{100 * expected_probability:.1f} %"
            assert good.locator(".row").count() == 5
            assert "not an image" in bad.locator(".status").inner_text()
            page.screenshot(path=str(SCREENSHOTS / "serve_page_desktop.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(SCREENSHOTS / "serve_page_phone.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
            page.set_viewport_size({"width": 1200, "height": 800})
            page.check("#cam")  # where the model looks: the card shows the Grad-CAM overlay, a click shows the photo again
            emerald = sorted((GEMSTONES / "test" / "Emerald").glob("*.jpg"))[0]
            page.set_input_files("#files", [str(emerald)])
            mapped = page.locator(f".card.done[data-file='{emerald.name}']")
            mapped.wait_for(timeout=60_000)
            assert mapped.get_attribute("data-cam") == "shown"
            assert mapped.locator("img.thumb").get_attribute("src").startswith("data:image/png;base64,")
            page.screenshot(path=str(SCREENSHOTS / "serve_page_cam.png"), full_page=True)
            mapped.locator("img.thumb").click()
            assert mapped.get_attribute("data-cam") == "hidden"
            assert mapped.locator("img.thumb").get_attribute("src").startswith("blob:")
            browser.close()
    finally:
        assert server.stop() == 0, server.log.read_text()
