"""``radfm demo``: the whole available path on a simulated case, no downloads.

Why a demo that grows: it is the first thing a new user runs and the quickest end-to-end
check that the pieces fit. The core part (simulate → write NIfTI → input check → reload →
overlays) runs here; each task adds a section through the ``radfm.demo`` entry-point group
(a callable ``section(ctx: DemoContext) -> DemoSection``), so the core never imports tasks.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from radfm import registry
from radfm.check import check_path
from radfm.data.phantom import PhantomCase, make_phantom
from radfm.io import load_volume, save_volume
from radfm.io.volume import Volume
from radfm.viz import save_overlay

log = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """What every demo section gets: the simulated case, its files and the output folder."""

    out_dir: Path
    case: PhantomCase
    image_path: Path
    labels_path: Path
    image: Volume  # reloaded from image_path, as a user's file would be
    seed: int


@dataclass
class DemoSection:
    title: str
    html: str
    ok: bool = True
    seconds: float = 0.0
    images: list[str] = field(default_factory=list)


def run_demo(out_dir: str | Path = "radfm-demo", *, seed: int = 0, shape: tuple[int, int, int] = (96, 96, 96),
             sections: list[str] | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Simulate a CT case, run every registered demo section, write ``out_dir/index.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: log.info(msg))
    t0 = time.perf_counter()
    say("simulating a CT phantom case (documented as simulated)")
    case = make_phantom(seed, modality="CT", shape=shape, spacing=(2.0, 2.0, 2.0))
    image_path = save_volume(case.image, out / "case_ct.nii.gz")
    labels_path = save_volume(case.labels, out / "case_labels.nii.gz")
    report = check_path(image_path)
    image = load_volume(image_path)
    ctx = DemoContext(out_dir=out, case=case, image_path=image_path, labels_path=labels_path, image=image, seed=seed)
    core = _core_section(ctx, report.format(), time.perf_counter() - t0)
    built: list[DemoSection] = [core]
    names = registry.available("radfm.demo") if sections is None else sections
    for name in names:
        say(f"demo section: {name}")
        t = time.perf_counter()
        try:
            section = registry.load("radfm.demo", name)(ctx)
        except Exception as exc:  # a failing section must not hide the others
            log.exception("demo section %s failed", name)
            section = DemoSection(title=name, html=f"<p class='bad'>failed: {html.escape(str(exc))}</p>", ok=False)
        section.seconds = time.perf_counter() - t
        built.append(section)
    index = out / "index.html"
    index.write_text(_page(built, seed))
    say(f"wrote {index}")
    return index


def _core_section(ctx: DemoContext, check_text: str, seconds: float) -> DemoSection:
    case = ctx.case
    png = save_overlay(ctx.out_dir / "phantom_labels.png", ctx.image.array, mask=load_volume(ctx.labels_path).array,
                       modality="CT", spacing=ctx.image.spacing, title="Simulated CT with its label map")
    rows = "".join(
        f"<tr><td>{html.escape(f.finding)}</td><td>{html.escape(f.organ)}</td>"
        f"<td>{'' if f.size_mm is None else f'{f.size_mm:.0f} mm'}</td><td>{html.escape(f.location)}</td></tr>"
        for f in case.findings
    ) or "<tr><td colspan=4>no findings (normal study)</td></tr>"
    body = f"""
<p>A <b>simulated</b> CT phantom (seed {ctx.seed}, {ctx.image.shape} voxels at
{', '.join(f'{s:g}' for s in ctx.image.spacing)} mm) was written to <code>{ctx.image_path.name}</code>,
checked with <code>radfm check</code> and read back as a user's file would be.</p>
<img src="{png.name}" alt="label overlay">
<h3>Input check</h3><pre>{html.escape(check_text)}</pre>
<h3>Ground-truth findings</h3>
<table><tr><th>finding</th><th>organ</th><th>size</th><th>location</th></tr>{rows}</table>
<h3>Reference report (rendered from the findings)</h3>
<p><b>Findings:</b> {html.escape(case.report.findings_text)}</p>
<p><b>Impression:</b> {html.escape(case.report.impression_text)}</p>"""
    return DemoSection(title="Phantom, I/O and input check", html=body, seconds=seconds, images=[png.name])


def _page(sections: list[DemoSection], seed: int) -> str:
    parts = []
    for s in sections:
        status = "ok" if s.ok else "failed"
        parts.append(f"<section><h2>{html.escape(s.title)} <small class='{status}'>{status}, "
                     f"{s.seconds:.1f} s</small></h2>{s.html}</section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>radfm demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ccc; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
pre {{ background: #f5f5f5; padding: 8px; white-space: pre-wrap; }}
.ok {{ color: #2a7; }} .failed, .bad {{ color: #c33; }}
.banner {{ background: #fff4d6; padding: 8px; border: 1px solid #e0c060; }}
</style></head><body>
<h1>radfm demo</h1>
<p class="banner">All images on this page are <b>simulated</b> (radfm's phantom generator, seed {seed}).
Model outputs are drafts for research use, not for diagnosis.</p>
{''.join(parts)}
</body></html>
"""
