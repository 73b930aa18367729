"""The cleanup app: detect -> choose regions -> erase, in a browser (Gradio).

    synthcxr cleanup-app [--run RUN] [--port P]          from a shell (= python -m support.cleanup.app)
    launch(run=paths.root, inline=True)                  from a notebook cell (05), shown in the output

Upload a radiograph (PNG/JPEG 8 or 16 bit, DICOM) or pick one from the run's dataset, a synthetic
set or any folder; the detected regions are drawn, numbered and listed with their detector and
score; tick the ones to erase or click two corners on the image to add a box; pick the backend
(Telea; RePaint with the run's DDPM; SD-2 inpainting from a local folder); erase, compare before
and after, and download the cleaned image, its mask and a JSON record. "Apply to the whole
folder" runs the batch cleaner of 05 with the same settings. It listens on 127.0.0.1 unless told
otherwise: it has no login, so only expose it on a network you trust. The work is done by
:class:`~support.cleanup.interactive.InteractiveCleanup`; this module only wires it to the page.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # nothing leaves the machine

try:
    import gradio as gr
except ImportError:
    raise ImportError("the cleanup app needs gradio: pip install --no-deps -r environments/requirements-nodeps.txt "
                      "(its run-time packages are pinned in requirements-cpu.txt)") from None

from support.cleanup.interactive import (  # noqa: E402
    REGION_COLUMNS, InteractiveCleanup, OpenedImage, draw_regions, list_folder, manual_box, open_image, preview,
    region_label, region_rows,
)

log = logging.getLogger(__name__)
MAX_UPLOAD = "300mb"          # a large uncompressed DICOM; the pixel bound is checked after upload
HOST = "127.0.0.1"
CSS = "#status p {margin: 0.2em 0} #regions [data-testid=checkbox-group] {max-height: 300px; overflow-y: auto}"


def _escape(text: str) -> str:
    """Plain text inside a Markdown line that starts with bold: names with _ or * stay as written."""
    return "".join("\\" + c if c in "\\`*_[]<>|~$" else c for c in str(text))


def _message(kind: str, text: str) -> str:
    return f"**{kind}**: {_escape(text)}"


def _empty_state() -> dict[str, Any]:
    return {"image": None, "boxes": [], "corner": None, "folder": None, "listing": {}}


class CleanupApp:
    """The page's event handlers around one :class:`InteractiveCleanup` (models loaded once).

    Each handler returns the new values of its outputs; input the app cannot use (not an image,
    too large, a missing folder, nothing ticked) comes back as a message in the status line, and
    the server keeps serving.
    """

    def __init__(self, core: InteractiveCleanup):
        self.core = core

    # -- opening an image ------------------------------------------------------------------
    def _opened(self, state: dict, image: OpenedImage) -> tuple:
        boxes = self.core.detect(image)
        state = {**state, "image": image, "boxes": boxes, "corner": None}
        shown = preview(image.pixels)
        h, w = image.pixels.shape[:2]
        counts = {s: sum(b.source == s for b in boxes) for s in ("dbnet", "marker")}
        found = (f"{len(boxes)} region(s): {counts['dbnet']} DBNet text, {counts['marker']} marker"
                 if boxes else "no text or marker found; click two corners on the image to add a box")
        status = _message("Opened", f"{image.name} ({w}x{h}, {image.read_as}): {found}.")
        if image.note:
            status += "  \n" + _escape(image.note)
        return (state, draw_regions(shown, boxes, []),
                gr.CheckboxGroup(choices=[(region_label(i, b), i) for i, b in enumerate(boxes)], value=[]),
                region_rows(boxes), None, None, None, status)

    def _failed_open(self, state: dict, exc: Exception) -> tuple:
        log.warning("cleanup app: %s", exc)
        return ({**state, "image": None, "boxes": [], "corner": None}, None, gr.CheckboxGroup(choices=[], value=[]),
                [], None, None, None, _message("Cannot open this file", str(exc)))

    def open_upload(self, path: str | None, state: dict) -> tuple:
        """An uploaded file -> the image, its regions drawn, listed and offered for ticking."""
        if not path:
            return self._failed_open(state, ValueError("no file uploaded"))
        try:
            return self._opened(state, open_image(path, Path(path).name))
        except (ValueError, OSError) as exc:
            return self._failed_open(state, exc)

    def list_images(self, source: str | None, folder: str | None, state: dict) -> tuple:
        """A dataset (the run's, a synthetic set, or a typed folder) -> its images to pick from."""
        root = Path(folder).expanduser() if folder and folder.strip() else self.core.sources().get(source or "")
        if root is None:
            return state, gr.Dropdown(choices=[], value=None), _message("No folder", "pick a dataset or type a folder")
        try:
            listing = list_folder(root)
        except (ValueError, OSError) as exc:
            log.warning("cleanup app: %s", exc)
            return ({**state, "folder": None, "listing": {}}, gr.Dropdown(choices=[], value=None),
                    _message("Cannot list this folder", str(exc)))
        state = {**state, "folder": str(root), "listing": {k: str(v) for k, v in listing.items()}}
        return (state, gr.Dropdown(choices=list(listing), value=None),
                _message("Listed", f"{len(listing)} image(s) in {root}; pick one"))

    def open_listed(self, label: str | None, state: dict) -> tuple:
        path = state.get("listing", {}).get(label or "")
        if path is None:
            return self._failed_open(state, ValueError("pick an image from the list"))
        try:
            return self._opened(state, open_image(path, f"{Path(path).name}"))
        except (ValueError, OSError) as exc:
            return self._failed_open(state, exc)

    # -- choosing regions ------------------------------------------------------------------
    def redraw(self, chosen: list[int] | None, state: dict):
        """The region view with the ticked regions drawn thicker."""
        image = state.get("image")
        if image is None:
            return None
        return draw_regions(preview(image.pixels), state["boxes"], chosen or [])

    def click(self, state: dict, chosen: list[int] | None, xy: tuple[int, int]) -> tuple:
        """A click on the region view: the first corner of a new box, or the second, which adds
        the box (ticked) to the regions."""
        image = state.get("image")
        if image is None:
            return state, gr.skip(), gr.skip(), gr.skip(), _message("No image", "open an image first")
        chosen = list(chosen or [])
        if state.get("corner") is None:
            state = {**state, "corner": (int(xy[0]), int(xy[1]))}
            return (state, gr.skip(), gr.skip(), gr.skip(),
                    _message("Corner", f"({xy[0]}, {xy[1]}); click the opposite corner to add the box"))
        box = manual_box(state["corner"], xy, image.pixels.shape)
        boxes = [*state["boxes"], box]
        chosen.append(len(boxes) - 1)
        state = {**state, "boxes": boxes, "corner": None}
        choices = [(region_label(i, b), i) for i, b in enumerate(boxes)]
        return (state, draw_regions(preview(image.pixels), boxes, chosen),
                gr.CheckboxGroup(choices=choices, value=chosen), region_rows(boxes),
                _message("Added", region_label(len(boxes) - 1, box)))

    def clear_drawn(self, state: dict, chosen: list[int] | None) -> tuple:
        """Drop the boxes drawn by hand; the detections and their ticks stay."""
        image = state.get("image")
        if image is None:
            return state, gr.skip(), gr.skip(), gr.skip()
        boxes = [b for b in state["boxes"] if b.source != "manual"]
        kept = [i for i in (chosen or []) if i < len(boxes)]
        state = {**state, "boxes": boxes, "corner": None}
        return (state, draw_regions(preview(image.pixels), boxes, kept),
                gr.CheckboxGroup(choices=[(region_label(i, b), i) for i, b in enumerate(boxes)], value=kept),
                region_rows(boxes))

    # -- erasing ---------------------------------------------------------------------------
    def erase(self, state: dict, chosen: list[int] | None, backend: str | None) -> tuple:
        """The ticked regions erased: before, after, the three files, and what was done."""
        image = state.get("image")
        if image is None:
            return gr.skip(), gr.skip(), gr.skip(), _message("No image", "open an image first")
        try:
            done = self.core.erase(image, state["boxes"], chosen or [], backend)
        except (ValueError, OSError) as exc:
            log.warning("cleanup app: %s", exc)
            return gr.skip(), gr.skip(), gr.skip(), _message("Cannot erase", str(exc))
        rec = done.record
        status = _message("Erased", f"{len(done.chosen)} region(s) of {image.name} with {rec['backend']} in "
                                    f"{done.seconds:.2f} s: {rec['mask_pixels']} pixels "
                                    f"({100 * rec['mask_fraction']:.2f}% of the image) changed, no other pixel; "
                                    f"files in {done.files['image'].parent}")
        return (preview(image.pixels), preview(done.result.image, like=image.pixels),
                [str(done.files[k]) for k in ("image", "mask", "record")], status)

    def apply_to_folder(self, state: dict, out_root: str | None, backend: str | None) -> tuple:
        """The batch cleaner over the listed folder: a summary, or why it cannot run."""
        folder = state.get("folder")
        if not folder:
            return None, _message("No folder", "list a dataset under 'From a dataset' first")
        out = (out_root or "").strip() or str(self.core.default_output(folder, backend))
        try:
            summary = self.core.apply_to_folder(folder, out, backend)
        except (ValueError, OSError) as exc:
            log.warning("cleanup app: %s", exc)
            return None, _message("Cannot clean the folder", str(exc))
        keys = ("root", "backend", "images", "cleaned", "unchanged", "already_done", "skipped", "seconds",
                "images_per_s", "skipped_files")
        return ({k: summary[k] for k in keys if k in summary},
                _message("Folder cleaned", f"{summary['cleaned']} cleaned, {summary['unchanged']} unchanged, "
                                           f"{summary['skipped']} skipped, into {summary['root']}"))


def build(core: InteractiveCleanup):
    """The Gradio page of ``core`` (not started: see :func:`launch`)."""
    app = CleanupApp(core)
    sources = core.sources()
    with gr.Blocks(title="SynthCXR cleanup", analytics_enabled=False) as page:
        gr.Markdown("## Text and marker removal\nOpen a radiograph, tick the regions to erase (or click two "
                    "corners on the image to add a box), choose the inpainting, and erase. Only pixels "
                    "under the mask change.")
        status = gr.Markdown(elem_id="status")
        state = gr.State(_empty_state())
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                with gr.Tab("Upload"):
                    upload = gr.File(label="Radiograph: PNG or JPEG (8 or 16 bit) or DICOM", elem_id="upload",
                                     height=120)
                with gr.Tab("From a dataset"):
                    source = gr.Dropdown(choices=list(sources), value=None, label="Run dataset or synthetic set",
                                         elem_id="source")
                    folder = gr.Textbox(label="or a folder (a dataset root or any folder of images)",
                                        elem_id="folder")
                    list_button = gr.Button("List images", size="sm")
                    picked = gr.Dropdown(choices=[], value=None, label="Image", elem_id="picked")
                backend = gr.Radio(choices=core.backends, value=core.default_backend, label="Inpainting",
                                   elem_id="backend")
                regions = gr.CheckboxGroup(choices=[], value=[], type="value", label="Regions to erase",
                                           elem_id="regions", show_select_all=True)
                with gr.Row():
                    clear = gr.Button("Remove drawn boxes", size="sm")
                    erase = gr.Button("Erase selected", variant="primary", elem_id="erase")
                downloads = gr.File(label="Downloads: cleaned image (PNG, input's bit depth), mask, record (JSON)",
                                    file_count="multiple", interactive=False, elem_id="downloads")
            with gr.Column(scale=5):
                view = gr.Image(label="Detected regions: DBNet orange, marker blue, drawn magenta (click two "
                                      "corners to add a box)", format="png", interactive=False, elem_id="view",
                                height=420)
                with gr.Row():
                    before = gr.Image(label="Before", format="png", interactive=False, elem_id="before", height=340)
                    after = gr.Image(label="After", format="png", interactive=False, elem_id="after", height=340)
                with gr.Accordion("Regions as a table", open=False):
                    table = gr.Dataframe(headers=REGION_COLUMNS, value=[], interactive=False, elem_id="table",
                                         max_height=300)
        with gr.Accordion("Apply to the whole folder", open=False):
            gr.Markdown("Runs 05's batch cleaner over every image of the folder listed under 'From a "
                        "dataset' (a MIMIC-CXR-JPG root), with the backend above: every detected region is "
                        "erased, as in 05. It writes a new root with `cleanup/records.csv` and resumes.")
            out_root = gr.Textbox(label="Output folder (empty: under the app's output folder)", elem_id="out-root")
            apply = gr.Button("Clean every image of the folder", elem_id="apply")
            summary = gr.JSON(label="Summary")

        opened = [state, view, regions, table, before, after, downloads, status]
        upload.upload(app.open_upload, [upload, state], opened)
        source.change(app.list_images, [source, folder, state], [state, picked, status])
        folder.submit(app.list_images, [source, folder, state], [state, picked, status])
        list_button.click(app.list_images, [source, folder, state], [state, picked, status])
        picked.input(app.open_listed, [picked, state], opened)
        regions.change(app.redraw, [regions, state], [view])

        def on_click(state_value, chosen, evt: gr.SelectData):
            return app.click(state_value, chosen, tuple(evt.index))

        view.select(on_click, [state, regions], [state, view, regions, table, status])
        clear.click(app.clear_drawn, [state, regions], [state, view, regions, table])
        erase.click(app.erase, [state, regions, backend], [before, after, downloads, status])
        apply.click(app.apply_to_folder, [state, out_root, backend], [summary, status])
    return page


def launch(run: str | os.PathLike | None = None, *, config=None, ddpm_path=None, sd_path=None, out_dir=None,
           host: str = HOST, port: int | None = None, inline: bool | None = None, block: bool = False,
           quiet: bool = False):
    """Load the models, build the page and serve it at ``host:port`` (a free port from 7860 when
    None). From a notebook, ``inline=True`` shows it in the cell's output. ``block`` keeps the
    caller waiting until Ctrl-C (the shell command); otherwise the page is returned, still
    served, and ``page.close()`` stops it."""
    core = InteractiveCleanup(config, run=run, ddpm_path=ddpm_path, sd_path=sd_path, out_dir=out_dir)
    page = build(core)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, inline=inline, prevent_thread_lock=not block, quiet=quiet,
                allowed_paths=[str(core.out_dir)], max_file_size=MAX_UPLOAD, ssr_mode=False, css=CSS,
                show_error=False, footer_links=[])
    return page


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="synthcxr cleanup-app", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run folder: its dataset and synthetic sets to pick from, its DDPM "
                                             "for RePaint, outputs under RUN/cleanup-app")
    ap.add_argument("--port", type=int, help="port to listen on (default: the first free one from 7860)")
    ap.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: this machine only)")
    ap.add_argument("--ddpm-path", type=Path, help="a DDPMPipeline folder for RePaint (default: RUN/models/ddpm/pipeline)")
    ap.add_argument("--sd-path", type=Path, help="a local SD-2 inpainting folder (diffusers) for the sd backend")
    ap.add_argument("--sam-checkpoint", type=Path, help="a SAM state dict: masks from SAM box prompts")
    ap.add_argument("--sam-kind", default="vit_h", choices=("vit_b", "vit_l", "vit_h"))
    ap.add_argument("--out", type=Path, help="where erased images go (default RUN/cleanup-app, else a temp folder)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from support.cleanup.config import cleanup_config

    args = parser().parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"--port {args.port}: expected 1..65535", file=sys.stderr)
        return 2
    if args.host not in (HOST, "localhost", "::1"):
        print(f"[cleanup-app] listening on {args.host}: anyone who can reach it can read and clean images "
              f"(there is no login)", file=sys.stderr)
    mask = {"sam_checkpoint": str(args.sam_checkpoint), "sam_kind": args.sam_kind} if args.sam_checkpoint else {}
    try:
        config = cleanup_config({"mask": mask}, source="synthcxr cleanup-app")
        launch(args.run, config=config, ddpm_path=args.ddpm_path, sd_path=args.sd_path, out_dir=args.out,
               host=args.host, port=args.port, block=True)
    except (OSError, ValueError) as exc:      # a missing folder or file, a bad option: named in the message
        print(f"\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
