"""Static SVG figures for the pages that must draw fast: the home page's divide-and-conquer figure.

The home page is the first view of a fresh server; a plotly chart there costs the browser its ~4.5 MB
plotly.js bundle (1.5-4 s on a busy 2-core machine) before the figure appears. This SVG is ~25 KB, shown
with ``st.image`` (``st.html`` strips inline SVG), drawn at once. Same content and colours as
:func:`ui.charts.divide_and_conquer_figure` (kept for notebooks); the ``<title>`` elements describe the
snippets and bars for anyone opening the SVG itself.
"""
from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

# the class palette of ui.charts (not imported: that module imports plotly)
CLASS_PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D",
                 "#EECA3B", "#BAB0AC", "#1F77B4", "#D62728", "#2CA02C", "#9467BD", "#8C564B", "#17BECF"]
FONT = "Source Sans Pro, Helvetica, Arial, sans-serif"
INK, GRID, MUTED = "#1F2937", "#E5E7EB", "#6B7280"


def _f(v: float) -> str:
    return f"{v:.1f}"


def divide_and_conquer_svg(ex: dict[str, Any], width: int = 1100, height: int = 470) -> str:
    """The track cut into snippets (top left), each snippet's class scores (bottom left), the scores summed
    (right). ``ex`` comes from :func:`core.synth.divide_and_conquer_example`."""
    classes = list(ex["classes"])
    colors = {c: CLASS_PALETTE[i % len(CLASS_PALETTE)] for i, c in enumerate(classes)}
    scores, total = np.asarray(ex["scores"], float), np.asarray(ex["total"], float)
    starts, ends = np.asarray(ex["starts"], float), np.asarray(ex["ends"], float)
    dur = float(ex["duration_s"])
    n = len(starts)

    L, R = 52, 850  # left panels' x range
    RX0, RX1 = 930, width - 58  # the summed bars
    T1, B1 = 34, 196  # track panel
    T2, B2 = 246, 400  # scores panel
    legend_y = height - 22

    def x(t: float) -> float:
        return L + (t + 0.2) / (dur + 0.4) * (R - L)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
           f'role="img" aria-label="the divide-and-conquer idea, computed" font-family="{FONT}" font-size="13" '
           f'fill="{INK}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#FFFFFF"/>']

    # 1 - the track and its snippets -----------------------------------------------------------------
    out.append(f'<text x="{L}" y="{T1 - 14}" font-size="15">1 · the track, cut into {ex["snippet_s"]:g} s snippets '
               f'overlapping by {ex["overlap_s"]:g} s</text>')
    a, b = ex["intruder_span"]
    out.append(f'<rect x="{_f(x(a))}" y="{T1}" width="{_f(x(b) - x(a))}" height="{B1 - T1}" fill="#E45756" '
               'fill-opacity="0.10"/>')
    out.append(f'<text x="{_f((x(a) + x(b)) / 2)}" y="{T1 + 12}" text-anchor="middle" font-size="12" fill="#b33">'
               f'a passage that sounds like “{escape(str(ex["intruder_class"]))}”</text>')
    wt, wy = np.asarray(ex["wave_t"], float), np.asarray(ex["wave_y"], float)
    mid, amp = T1 + 62, 40.0
    peak = float(np.max(np.abs(wy))) or 1.0
    bins = 700
    edges = np.linspace(wt[0], wt[-1], bins + 1) if wt.size else np.zeros(1)
    idx = np.clip(np.searchsorted(wt, edges), 0, max(wt.size - 1, 0))
    top, bottom = [], []
    for i in range(bins):
        seg = wy[idx[i]:max(idx[i + 1], idx[i] + 1)]
        if seg.size:
            xc = x((edges[i] + edges[i + 1]) / 2)
            top.append(f"{_f(xc)},{_f(mid - amp * float(seg.max()) / peak)}")
            bottom.append(f"{_f(xc)},{_f(mid - amp * float(seg.min()) / peak)}")
    if top:
        out.append(f'<polygon points="{" ".join(top + bottom[::-1])}" fill="#8a8f98" stroke="#8a8f98" '
                   'stroke-width="0.6"/>')
    for i, (s, e) in enumerate(zip(starts, ends)):
        lane = B1 - 44 + 18 * (i % 2)
        win = classes[int(np.argmax(scores[i]))]
        c = colors[win]
        out.append(f'<g><title>snippet {i + 1}: {s:.1f}–{e:.1f} s, votes for {escape(win)}</title>'
                   f'<line x1="{_f(x(s))}" y1="{lane}" x2="{_f(x(e))}" y2="{lane}" stroke="{c}" stroke-width="7"/>'
                   f'<line x1="{_f(x(s))}" y1="{lane - 6}" x2="{_f(x(s))}" y2="{lane + 6}" stroke="{c}" '
                   f'stroke-width="2"/><line x1="{_f(x(e))}" y1="{lane - 6}" x2="{_f(x(e))}" y2="{lane + 6}" '
                   f'stroke="{c}" stroke-width="2"/></g>')

    # 2 - every snippet votes -------------------------------------------------------------------------
    out.append(f'<text x="{L}" y="{T2 - 14}" font-size="15">2 · every snippet votes (class scores)</text>')
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        yv = B2 - v * (B2 - T2)
        out.append(f'<line x1="{L}" y1="{_f(yv)}" x2="{R}" y2="{_f(yv)}" stroke="{GRID}"/>'
                   f'<text x="{L - 6}" y="{_f(yv + 4)}" text-anchor="end" font-size="11" fill="{MUTED}">{v:g}</text>')
    out.append(f'<text transform="translate({L - 36},{(T2 + B2) / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="12" fill="{MUTED}">score</text>')
    for i, (s, e) in enumerate(zip(starts, ends)):
        w = (x(e) - x(s)) * 0.55
        x0 = (x(s) + x(e)) / 2 - w / 2
        y0 = float(B2)
        tip = "; ".join(f"{escape(c)} {scores[i, k]:.2f}" for k, c in enumerate(classes))
        out.append(f'<g><title>snippet {i + 1} ({s:.1f}–{e:.1f} s): {tip}</title>')
        for k, c in enumerate(classes):
            h = float(scores[i, k]) * (B2 - T2)
            if h > 0.05:
                out.append(f'<rect x="{_f(x0)}" y="{_f(y0 - h)}" width="{_f(w)}" height="{_f(h)}" '
                           f'fill="{colors[c]}"/>')
            y0 -= h
        out.append("</g>")
    step = float(ex["snippet_s"]) - float(ex["overlap_s"]) or 1.0
    t = 0.0
    while t <= dur + 1e-9:
        out.append(f'<text x="{_f(x(t))}" y="{B2 + 16}" text-anchor="middle" font-size="11" fill="{MUTED}">'
                   f'{t:g}</text>')
        t += step
    out.append(f'<text x="{(L + R) / 2}" y="{B2 + 34}" text-anchor="middle" font-size="12" fill="{MUTED}">'
               'time (s)</text>')

    # 3 - votes summed ---------------------------------------------------------------------------------
    out.append(f'<text x="{RX0}" y="{T1 - 14}" font-size="15">3 · votes summed</text>')
    order = np.argsort(total)[::-1]
    vmax = max(float(total.max()) * 1.3, 1.0)
    row_h = (B2 - T1) / max(len(classes), 1)
    for r, k in enumerate(order):
        c = classes[k]
        yc = T1 + (r + 0.5) * row_h
        bh = min(row_h * 0.6, 34)
        bw = float(total[k]) / vmax * (RX1 - RX0)
        out.append(f'<g><title>{escape(c)}: sum of scores {total[k]:.2f}</title>'
                   f'<rect x="{RX0}" y="{_f(yc - bh / 2)}" width="{_f(max(bw, 0.5))}" height="{_f(bh)}" '
                   f'fill="{colors[c]}"/></g>'
                   f'<text x="{RX0 - 8}" y="{_f(yc + 4)}" text-anchor="end" font-size="12">{escape(c)}</text>'
                   f'<text x="{_f(RX0 + bw + 5)}" y="{_f(yc + 4)}" font-size="12" fill="{MUTED}">{total[k]:.1f}</text>')
    out.append(f'<line x1="{RX0}" y1="{T1}" x2="{RX0}" y2="{B2}" stroke="{MUTED}"/>')
    winner = classes[int(np.argmax(total))]
    out.append(f'<text x="{RX1}" y="{B2 + 16}" text-anchor="end" font-size="15">track → '
               f'<tspan font-weight="bold">{escape(winner)}</tspan></text>'
               f'<text x="{RX1}" y="{B2 + 34}" text-anchor="end" font-size="12" fill="{MUTED}">'
               f'{total.max() / max(n, 1):.0%} of the votes</text>')

    # legend ---------------------------------------------------------------------------------------------
    lx = L
    out.append(f'<text x="{lx}" y="{legend_y + 4}" font-size="12" fill="{MUTED}">class</text>')
    lx += 44
    for c in classes:
        out.append(f'<rect x="{lx}" y="{legend_y - 6}" width="12" height="12" fill="{colors[c]}"/>'
                   f'<text x="{lx + 17}" y="{legend_y + 4}" font-size="12">{escape(c)}</text>')
        lx += 30 + 7.5 * len(c)
    out.append("</svg>")
    return "".join(out)
