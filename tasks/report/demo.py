"""Demo section "Report drafting": the starter model drafts reports for the demo phantom.

Two drafts of the same SIMULATED case — from the image alone, and from the image plus the
ground-truth findings — shown beside the reference report with finding-level
precision/recall/F1 and the sentence → finding links (label id and voxel box).
"""

from __future__ import annotations

import html
from typing import Any

from radfm.demo import DemoContext, DemoSection

__all__ = ["section"]


def _prf_cell(d: dict[str, Any]) -> str:
    return f"P {d['precision']:.2f} · R {d['recall']:.2f} · F1 {d['f1']:.2f}"


def _links(draft: Any) -> str:
    rows = []
    for s in draft.sentences:
        if s.link == "none":
            continue
        f = s.finding or {}
        what = html.escape(", ".join(str(f.get(k)) for k in ("finding", "organ", "location", "label") if f.get(k)))
        box = "" if s.bbox_ijk is None else html.escape(str(list(s.bbox_ijk)))
        rows.append(f"<tr><td>{html.escape(s.text)}</td><td>{s.link}</td><td>{what}</td>"
                    f"<td>{'' if s.label_id is None else s.label_id}</td><td>{box}</td></tr>")
    if not rows:
        return "<p>No sentence states a finding.</p>"
    return ("<table><tr><th>sentence</th><th>link</th><th>finding</th><th>label id</th><th>box (i0,j0,k0,i1,j1,k1)</th>"
            "</tr>" + "".join(rows) + "</table>")


def section(ctx: DemoContext) -> DemoSection:
    """Draft the demo phantom's report with the shipped starter model."""
    from radfm.metrics import set_prf
    from radfm.tasks.report.drafting import DISCLAIMER, draft_report, mentioned_findings
    from radfm.tasks.report.model import load_report_model

    title = "Report drafting (image → report, starter model)"
    try:
        rm = load_report_model()
    except Exception as exc:  # a missing model must not break the rest of the demo
        return DemoSection(title=title, html=f"<p class='bad'>starter report model unavailable: "
                           f"{html.escape(str(exc))}</p>", ok=False)
    case = ctx.case
    gold = {(f.finding, f.organ) for f in case.findings}
    drafts = {
        "from the image": draft_report(ctx.image, None, rm),
        "from the image + ground-truth findings": draft_report(ctx.image, case.findings, rm),
    }
    ref = case.report
    cells = [("reference (rendered from the ground truth)", ref.findings_text, ref.impression_text,
              _prf_cell(set_prf([gold], [mentioned_findings(ref.text)])))]
    for name, d in drafts.items():
        cells.append((f"draft {name}", d.findings_text, d.impression_text,
                      _prf_cell(set_prf([gold], [mentioned_findings(d.text)]))))
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in cells)
    row_f = "".join(f"<td>{html.escape(c[1])}</td>" for c in cells)
    row_i = "".join(f"<td>{html.escape(c[2])}</td>" for c in cells)
    row_s = "".join(f"<td>{html.escape(c[3])}</td>" for c in cells)
    gold_txt = ", ".join(f"{f} ({o})" for f, o in sorted(gold)) or "none"
    body = f"""
<p class="banner">{html.escape(DISCLAIMER)} The starter model was trained on SIMULATED phantoms only
(see <code>tasks/report/weights/MODEL_CARD.md</code>).</p>
<p>Ground-truth findings (finding, organ): {html.escape(gold_txt)}. Finding-level scores compare the
(finding, organ) pairs a text states positively with the ground truth.</p>
<table><tr><th></th>{head}</tr>
<tr><th>FINDINGS</th>{row_f}</tr><tr><th>IMPRESSION</th>{row_i}</tr>
<tr><th>finding-level</th>{row_s}</tr></table>
<h3>Sentence → finding links (draft from image + findings)</h3>
{_links(drafts["from the image + ground-truth findings"])}
<h3>Sentence → finding links (draft from the image alone: findings read from the text, no voxels)</h3>
{_links(drafts["from the image"])}"""
    return DemoSection(title=title, html=body, ok=True)
