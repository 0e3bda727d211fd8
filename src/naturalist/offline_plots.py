"""``dvc plots show`` and ``dvc plots diff`` pages that render without a network.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it stays blank.
``make plots`` (``python -m naturalist.offline_plots show``) renders the same plots with a local
HTML template instead, and writes the three libraries next to the page as one script,
``vega-bundle.js``. The scripts come from the ``vl-convert-python`` package on PyPI, which ships
them (it is a pinned dependency), so nothing third-party is committed here and nothing is
fetched from a CDN. The result, ``dvc_plots/``, opens from disk and can be zipped and mailed.

    python -m naturalist.offline_plots show                # = make plots
    python -m naturalist.offline_plots diff main           # workspace against main
    python -m naturalist.offline_plots show -o out results/evaluate/plots/sklearn
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from naturalist.errors import PipelineError, run_stage

BUNDLE = "vega-bundle.js"
# DVC's built-in templates are Vega-Lite v5 specs: bundle the newest v5 that vl-convert ships
VEGA_LITE_VERSION = "5.21"
CACHE_DIR = Path(".cache/plots")
OUTPUT_DIR = Path("dvc_plots")

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots</title>
    <!-- vega, vega-lite and vega-embed, from the vl-convert-python package: no CDN -->
    <script src="vega-bundle.js"></script>
    <style>
        body { font-family: system-ui, sans-serif; margin: 16px; }
        table { border-spacing: 15px; }
        .offline-note { color: #57606a; font-size: 13px; margin: 0 0 8px 15px; }
    </style>
</head>
<body>
    <p class="offline-note">DVC plots, rendered offline with the vega scripts in vega-bundle.js.</p>
    {plot_divs}
</body>
</html>
"""


def vega_bundle(vl_version: str = VEGA_LITE_VERSION) -> str:
    """vega + vega-lite + vega-embed as one classic script that sets ``window.vegaEmbed``."""
    try:
        import vl_convert
    except ImportError:
        raise PipelineError(
            "the vl-convert-python package is missing: run `make install` "
            "(or pip install -e .) to get the offline vega scripts"
        ) from None
    return vl_convert.javascript_bundle(vl_version=vl_version)


def write_assets(out_dir: Path, cache_dir: Path = CACHE_DIR) -> tuple[Path, Path]:
    """Write the HTML template to ``cache_dir`` and the vega bundle to ``out_dir``.

    The bundle (about 1 MB) is built once per vl-convert version and Vega-Lite version and
    cached in ``cache_dir``.
    """
    import vl_convert

    cache_dir.mkdir(parents=True, exist_ok=True)
    version = getattr(vl_convert, "__version__", "unknown")
    cached = cache_dir / f"vega-bundle-{version}-vl{VEGA_LITE_VERSION}.js"
    if not cached.is_file():
        tmp = cached.with_name(cached.name + ".tmp")
        tmp.write_text(vega_bundle(), encoding="utf-8")
        tmp.replace(cached)
    template = cache_dir / "offline_template.html"
    template.write_text(TEMPLATE, encoding="utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = out_dir / BUNDLE
    bundle.write_bytes(cached.read_bytes())
    return template, bundle


def render(command: str, extra: Sequence[str], out_dir: Path = OUTPUT_DIR) -> Path:
    """Run ``dvc plots <command>`` with the offline template; return the page's path."""
    template, _ = write_assets(out_dir)
    args = [
        sys.executable,
        "-m",
        "dvc",
        "plots",
        command,
        *extra,
        "--html-template",
        str(template),
        "-o",
        str(out_dir),
    ]
    done = subprocess.run(args, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if done.returncode != 0:
        raise PipelineError(f"dvc plots {command} failed (exit {done.returncode})")
    page = out_dir / "index.html"
    if not page.is_file():
        raise PipelineError(f"dvc plots {command} wrote no {page}")
    return page


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m naturalist.offline_plots",
        description="dvc plots show/diff with a local template and local vega scripts.",
    )
    parser.add_argument("command", choices=("show", "diff"))
    parser.add_argument("-o", "--out", type=Path, default=OUTPUT_DIR, help="default: dvc_plots")
    args, extra = parser.parse_known_args(argv)
    page = render(args.command, extra, args.out)
    print(f"plots: open {page} in a browser (works offline: vega scripts in {args.out}/{BUNDLE})")


if __name__ == "__main__":
    run_stage(main)
