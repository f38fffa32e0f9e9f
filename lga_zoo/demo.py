"""``lga-zoo demo``: a Gradio app over the public API (``load``, ``explain``, ``compare``).

Pick or upload an image, pick models, a method and a perturbation; per model the page shows the
prediction with its probabilities, the map, the map after the perturbation and the stability
score of ``explain(stability=True)``. Needs the ``demo`` extra: ``pip install -e ".[demo]"``.
The same app runs as a Hugging Face Space from ``spaces/lga-zoo-demo/``.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from PIL import Image

MAX_PIXELS = 4096 * 4096
PERTURBATIONS = ("none", "noise", "targeted", "topk")
METHOD_CHOICES = {"gradient (grad)": "grad", "integrated gradients (ig)": "ig", "SmoothGrad": "smoothgrad", "boundary": "boundary"}  # fmt: skip
FAST_SETTINGS = {"ig": {"steps": 32}, "smoothgrad": {"samples": 16}, "boundary": {"steps": 32}}


def default_models() -> list[str]:
    """The standard and the LGA model of the best published pair: the flagship when its weights are
    here, else the narrow CPU-tier pair."""
    from .registry import list_models

    published = set(list_models())
    for pair in (
        ("resnet18_cifar10_standard", "resnet18_cifar10_lga"),
        ("resnet18_w16_cifar10_standard", "resnet18_w16_cifar10_lga"),
    ):
        if set(pair) <= published:
            return list(pair)
    return sorted(published)[:2]


def example_images(folder: str | Path | None = None) -> list[str]:
    """The example images in ``folder`` (default: the checkout's ``examples/``, one CIFAR-10 test
    image per class)."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[1] / "examples"
    return [str(p) for p in sorted(folder.glob("*.jpg"))]


def read_upload(path: str | None) -> Image.Image:
    """The uploaded file as a PIL image (any mode: explain() maps each to RGB pixels in [0, 1],
    16-bit ones by 65535), or a one-line error for the page."""
    from .inputs import InputError, open_image

    if not path:
        raise ValueError("pick an example or upload an image first")
    try:
        return open_image(path, max_pixels=MAX_PIXELS)
    except InputError as err:
        if "pixels" in str(err) or "too large" in str(err):
            raise ValueError(
                f"{str(err).split(': ', 1)[-1]}; the demo takes up to 4096x4096, resize it first"
            ) from err
        raise ValueError(
            f"this upload is not an image Pillow can read ({Path(path).suffix or 'no suffix'})"
        ) from err


def analyse(
    image_path: str | None, models: list[str], method: str, perturbation: str, progress=None
) -> dict[str, Any]:
    """What the page shows, as plain data: per model the prediction, the probabilities, the
    stability score and (with a perturbation) the top-k intersection after it; plus the figure."""
    import lga_zoo

    image = read_upload(image_path)
    if not models:
        raise ValueError("pick at least one model")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation {perturbation!r}; choose one of {PERTURBATIONS}")
    method = METHOD_CHOICES.get(method, method)
    settings = FAST_SETTINGS.get(method, {})
    rows: dict[str, Any] = {}
    overlays = []
    for n, name in enumerate(models):
        if progress is not None:
            progress(n / (len(models) + 1), desc=f"explaining with {name}")
        model = lga_zoo.load(name)
        exp = model.explain(image, method=method, stability=True, **settings)
        probabilities = exp.probabilities[0]
        top = probabilities.argsort(descending=True)[:3].tolist()
        rows[name] = {
            "predicted": exp.label_of(int(exp.predicted[0])),
            "probabilities": {exp.label_of(i): round(probabilities[i].item(), 4) for i in top},
            "stability": {key: round(value[0].item(), 4) for key, value in exp.stability.items()},
        }
        overlays.append((exp.overlay(show_stability=True), f"{name}: {rows[name]['predicted']}"))
    figure = None
    if perturbation != "none":
        if progress is not None:
            progress(len(models) / (len(models) + 1), desc=f"{perturbation} perturbation (100 attack steps)")
        comparison = lga_zoo.compare(image, models, attack=perturbation, method=method, **settings)
        for row in comparison.rows:
            rows[row.model]["topk_after_perturbation"] = round(row.topk, 4)
            rows[row.model]["predicted_after_perturbation"] = row.attacked_predicted
        buffer = io.BytesIO()
        comparison.figure.savefig(buffer, format="png", dpi=100)
        figure = Image.open(io.BytesIO(buffer.getvalue()))
    return {
        "rows": rows,
        "overlays": overlays,
        "figure": figure,
        "method": method,
        "perturbation": perturbation,
    }


def client_message(err: Exception, upload_path: str | None = None) -> str:
    """The error as the page shows it: the upload named by its file name, and no other path of the
    server's temporary folder (where Gradio keeps uploads).

    Args:
        err: the error to show.
        upload_path: the server-side path of the upload, if any.

    Returns:
        A one-line message without server paths.
    """
    text = str(err)
    if upload_path:
        text = text.replace(str(upload_path), Path(upload_path).name)
    temp = re.escape(tempfile.gettempdir().rstrip(os.sep) + os.sep)
    return re.sub(temp + r"[^\s'\"]*", lambda m: Path(m.group(0)).name, text)


def summary_markdown(result: dict[str, Any]) -> str:
    """The numbers of :func:`analyse` as a Markdown table for the page."""
    lines = [
        "| model | prediction | top probabilities | stability: noise | stability: attack | top-k after perturbation |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        probabilities = ", ".join(f"{label} {p:.1%}" for label, p in row["probabilities"].items())
        after = row.get("topk_after_perturbation")
        lines.append(
            f"| {name} | {row['predicted']} | {probabilities} | {row['stability']['noise']:.2f} | "
            f"{row['stability']['attack']:.2f} | {'-' if after is None else f'{after:.2f}'} |"
        )
    lines.append(
        "\nStability: the share of the map's top 10% pixels that stay in the top 10% under uniform noise of "
        "4/255 and after a 20-step targeted attack (1 = unchanged). Models are loaded with `lga_zoo.load`."
    )
    return "\n".join(lines)


def build_app(models: list[str] | None = None, examples: str | Path | None = None):
    """The Gradio Blocks app; ``models`` are the zoo names offered (default: every published one,
    with the best standard/LGA pair ticked); ``examples`` a folder of example images (default: the
    checkout's ``examples/``)."""
    import gradio as gr

    from .registry import list_models

    choices = models or list_models()
    ticked = [m for m in default_models() if m in choices] or choices[:1]

    def run(image_path, chosen, method, perturbation, progress=gr.Progress()):  # noqa: B008 (Gradio idiom)
        try:
            result = analyse(image_path, chosen, method, perturbation, progress)
        except (ValueError, RuntimeError, OSError) as err:
            raise gr.Error(client_message(err, image_path)) from None
        return summary_markdown(result), result["overlays"], result["figure"], result["rows"]

    def show(image_path):
        if not image_path:
            return None
        try:
            return read_upload(image_path)
        except ValueError as err:
            raise gr.Error(client_message(err, image_path)) from None

    with gr.Blocks(title="lga-zoo: explanations that hold up") as app:
        gr.Markdown(
            "# lga-zoo: explanations that hold up\n"
            "Pick an example or upload an image, then compare how the standard and the LGA model explain it, "
            "and how much a tiny perturbation (4/255 per pixel) moves each explanation."
        )
        with gr.Row():
            with gr.Column():
                # A file input (not gr.Image) so that every upload reaches read_upload, whose
                # one-line message the page shows, instead of failing inside Gradio's decoding.
                image = gr.File(
                    label="image file (JPEG, PNG, ...)",
                    file_types=["image"],
                    type="filepath",
                    elem_id="input-image",
                )
                preview = gr.Image(label="preview", interactive=False, height=160, elem_id="preview")
                found = example_images(examples)
                if found:
                    gr.Examples(found, inputs=image, label="bundled examples (CIFAR-10 test images)")
                chosen = gr.CheckboxGroup(choices, value=ticked, label="models", elem_id="models")
                method = gr.Dropdown(list(METHOD_CHOICES), value="gradient (grad)", label="method")
                perturbation = gr.Radio(list(PERTURBATIONS), value="targeted", label="perturbation")
                button = gr.Button("Explain", variant="primary", elem_id="run")
            with gr.Column():
                summary = gr.Markdown(elem_id="summary")
                overlays = gr.Gallery(label="maps (stability under each)", columns=2, height="auto")
                figure = gr.Image(label="before and after the perturbation", type="pil", elem_id="figure")
                numbers = gr.JSON(label="numbers", visible=False)
        image.change(show, inputs=image, outputs=preview)
        button.click(
            run,
            inputs=[image, chosen, method, perturbation],
            outputs=[summary, overlays, figure, numbers],
            api_name="run",
        )
    return app


def main(argv: list[str] | None = None) -> int:
    """``lga-zoo demo [--models A,B] [--host 127.0.0.1] [--port 7860]``."""
    import argparse

    from .arguments import add_demo_arguments

    parser = argparse.ArgumentParser(prog="lga-zoo demo", description="the Gradio demo app")
    add_demo_arguments(parser)
    return run_from_args(parser.parse_args(argv))


STOP_SECONDS = 5.0  # on SIGTERM the server has this long to close before the process ends regardless


def stop_within(app, seconds: float) -> None:
    """End the process: close ``app`` (the Gradio server and its queue), but after ``seconds`` at
    the latest, whatever connections or queue workers still hold it. Exit status 0."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()
    try:
        app.close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # not sys.exit: it would wait for Gradio's worker threads


def run_from_args(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from this server
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise RuntimeError('the demo needs Gradio: pip install -e ".[demo]"') from None
    from .registry import list_models

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    unknown = sorted(set(models or []) - set(list_models()))
    if unknown:
        raise ValueError(f"no published weights for {unknown}; published: {list_models()}")
    app = build_app(models)

    signal.signal(signal.SIGTERM, lambda signum, frame: stop_within(app, STOP_SECONDS))
    app.queue().launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0
