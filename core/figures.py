"""Static figures as plain SVG (no plotting dependency): the article's Figure 4, mean ± SD bars.

The dashboard draws the interactive versions with plotly; these files go into ``results/`` and the README.
"""
from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#9D755D", "#E45756", "#72B7B2", "#EECA3B"]


def bar_chart_svg(
    groups: Sequence[str],
    series: Sequence[str],
    means: Sequence[Sequence[float | None]],
    sds: Sequence[Sequence[float | None]],
    *,
    title: str = "",
    y_label: str = "accuracy",
    y_max: float = 1.0,
    notes: Sequence[str] = (),
    width: int = 760,
    height: int = 420,
) -> str:
    """Grouped bars with ±SD error bars. ``means[g][s]`` is series ``s`` in group ``g`` (None = no bar)."""
    left, right, top, bottom = 64, 170, 48 if title else 20, 56 + 16 * len(notes)
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2}" y="26" text-anchor="middle" font-size="16" font-weight="bold">'
                   f'{escape(title)}</text>')

    def y(v: float) -> float:
        return top + ph * (1 - max(0.0, min(v, y_max)) / y_max)

    for i in range(0, 11):
        v = y_max * i / 10
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end" fill="#444">{v:.0%}</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" '
               f'text-anchor="middle" fill="#222">{escape(y_label)}</text>')
    gw = pw / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(series))
    for g, gname in enumerate(groups):
        x0 = left + g * gw + gw * 0.1
        for s in range(len(series)):
            m = means[g][s]
            if m is None:
                continue
            sd = sds[g][s] or 0.0
            x = x0 + s * bw
            color = PALETTE[s % len(PALETTE)]
            out.append(f'<rect x="{x:.1f}" y="{y(m):.1f}" width="{bw * 0.92:.1f}" height="{y(0) - y(m):.1f}" '
                       f'fill="{color}"><title>{escape(series[s])}, {escape(gname)}: {m:.1%} ± {sd:.1%}</title></rect>')
            cx = x + bw * 0.46
            if sd > 0:
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(m + sd):.1f}" y2="{y(m - sd):.1f}" '
                           f'stroke="#222" stroke-width="1.5"/>')
                for v in (m + sd, m - sd):
                    out.append(f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                               f'stroke="#222" stroke-width="1.5"/>')
            out.append(f'<text x="{cx:.1f}" y="{y(m + sd) - 6:.1f}" text-anchor="middle" font-size="11" '
                       f'fill="#222">{m:.1%}</text>')
        out.append(f'<text x="{left + g * gw + gw / 2:.1f}" y="{top + ph + 22}" text-anchor="middle" '
                   f'fill="#222">{escape(gname)}</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#444"/>')
    for s, sname in enumerate(series):
        ly = top + 10 + s * 22
        out.append(f'<rect x="{left + pw + 16}" y="{ly - 10}" width="14" height="14" '
                   f'fill="{PALETTE[s % len(PALETTE)]}"/>')
        out.append(f'<text x="{left + pw + 36}" y="{ly + 2}" fill="#222">{escape(sname)}</text>')
    for i, note in enumerate(notes):
        out.append(f'<text x="{left}" y="{height - 14 - 16 * (len(notes) - 1 - i)}" font-size="11" '
                   f'fill="#555">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
