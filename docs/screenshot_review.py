"""Screenshot of the napari review widget on the demo results.

Run after the demo (``snakemake --cores N``), on a display or under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshot_review.py

It opens ``results/`` in a napari viewer, docks the review widget, opens a
sample, moves to the first flagged object of the review queue and saves the
window as ``docs/figures/review_widget.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wait(widget, app, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while widget.busy:
        if time.monotonic() > end:
            raise TimeoutError("the review widget is still busy")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas draw
        app.processEvents()
        time.sleep(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"), help="results folder")
    parser.add_argument("--sample", default=None, help="sample (default: the first)")
    parser.add_argument("--out", default=str(ROOT / "docs/figures/review_widget.png"))
    parser.add_argument("--zoom", type=float, default=4.0, help="canvas zoom on the object")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from unetpipe.core.layout import list_samples
    from unetpipe.plugin.review_widget import ReviewWidget, camera_of

    sample = args.sample or list_samples(args.results)[0]
    viewer = napari.Viewer(title="unetpipe review", show=True)
    viewer.window._qt_window.resize(1600, 1000)
    widget = ReviewWidget(viewer, results=args.results)
    viewer.window.add_dock_widget(widget, name="Review masks", area="right")
    app = QApplication.instance()
    widget.open_sample(sample)
    _wait(widget, app)
    if widget.store is None:
        print(f"screenshot_review: {widget.status.text()}", file=sys.stderr)
        return 1
    # the first flagged object away from the image border (a clearer picture)
    for _ in range(min(50, len(widget.queue))):
        widget.next()
        _wait(widget, app)
        if "border" not in widget.queue.iloc[widget.queue_pos]["reasons"]:
            break
    camera_of(viewer).zoom = args.zoom
    end = time.monotonic() + 6  # let the notification toast fade
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.05)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out} ({widget.queue_label.text()})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
