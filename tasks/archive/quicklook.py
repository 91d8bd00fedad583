"""A small PNG map of one archived day, for flow artifacts and a first look without GIS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from tasks.archive.cog import ArchiveWriteError
from tasks.io.atomic import atomic_path as publishing

# Enough pixels for a readable artifact; bigger days are read from their overviews.
_MAX_PIXELS_WIDE = 800


def quicklook_png(cog_path: Path | str, png_path: Path | str, title: str) -> Path:
    """Render band 1 (XCO2) of `cog_path` to `png_path` with a ppm colourbar; returns `png_path`."""
    # Imported here so flows that only write COGs don't pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    png_path = Path(png_path)
    with rasterio.open(cog_path) as src:
        factor = max(1, int(np.ceil(src.width / _MAX_PIXELS_WIDE)))
        out_shape = (max(1, src.height // factor), max(1, src.width // factor))
        xco2 = src.read(1, out_shape=out_shape, resampling=Resampling.average, masked=True)
        unit = src.units[0] or "ppm"
        left, bottom, right, top = src.bounds

    values = xco2.compressed()
    finite = values[np.isfinite(values)]
    # Percentiles, not min/max: one odd cell should not wash out the day's gradients.
    vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5

    # Degrees of longitude shrink with latitude; without this the map looks stretched east-west.
    aspect = 1 / max(np.cos(np.radians((bottom + top) / 2)), 0.1)
    # Size the figure to the map so little of it is blank margin, for wide and tall regions.
    map_height_per_width = (top - bottom) * aspect / (right - left)
    map_width = min(5.6, 7.9 / map_height_per_width)
    map_height = map_width * map_height_per_width

    # A Figure without pyplot: no global state, safe in worker threads, no display needed.
    figure = Figure(figsize=(map_width + 1.9, max(map_height + 1.1, 2.5)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_invalid(xco2.filled(np.nan)),
        extent=(left, right, bottom, top),
        origin="upper",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    axes.set_aspect(aspect)
    axes.set_facecolor("0.85")  # cells without an estimate show as grey
    axes.xaxis.set_major_locator(MaxNLocator(nbins=max(2, int(map_width))))
    axes.set_xlabel("Longitude (°E)")
    axes.set_ylabel("Latitude (°N)")
    axes.set_title(title)
    # An inset follows the map's drawn box, so the colourbar is exactly as tall as the map.
    colourbar_axes = axes.inset_axes((1.03, 0.0, 0.035, 1.0))
    figure.colorbar(image, cax=colourbar_axes, label=f"XCO2 ({unit})")

    with publishing(png_path, verify=_decodes_whole, error=ArchiveWriteError, local_writer=True) as temp:
        # The inset colour bar is outside the layout engine's view: "tight" keeps its label (and the
        # latitude label) inside the picture instead of cut at the edges.
        figure.savefig(temp, format="png", bbox_inches="tight", pad_inches=0.08)
    return png_path


def _decodes_whole(temp: Path) -> None:
    # A PNG cut short still has a valid header; decoding every row is what finds the cut.
    from PIL import Image

    with Image.open(temp) as image:
        if image.format != "PNG":
            raise ValueError(f"written as {image.format}, not PNG")
        image.load()


def quicklook_markdown(cog_path: Path | str, title: str) -> str:
    """Render a quicklook PNG beside the COG (in quicklooks/) and return Markdown with the image
    inline, so the Prefect UI shows the map without access to the archive's disk."""
    import base64

    cog_path = Path(cog_path)
    png = quicklook_png(cog_path, cog_path.parent / "quicklooks" / f"{cog_path.stem}.png", title)
    encoded = base64.b64encode(png.read_bytes()).decode()
    return (f"# {title}\n\n![{title}](data:image/png;base64,{encoded})\n\n"
            f"COG: `{cog_path}`  \nPNG: `{png}`\n")
