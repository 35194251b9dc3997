"""Plotly figures of the dashboard: pure functions of engine results (no Streamlit, no computation that
belongs to the engine). One colour per class everywhere, one per split."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.kinds import kinds
from ui.text import band_labels, headline_groups, kind_label

CLASS_PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D",
                 "#EECA3B", "#BAB0AC", "#1F77B4", "#D62728", "#2CA02C", "#9467BD", "#8C564B", "#17BECF"]
SPLIT_COLORS = {"train": "#4C78A8", "val": "#F58518", "test": "#54A24B"}
#: Magma, but starting at #000000: Streamlit's front end swaps the colours #000001 ... #000010 in a figure for
#: its theme's chart colours (placeholders), and Magma's darkest stop is #000004 (floor bins came out pink).
MAGMA = [[i / 9, c] for i, c in enumerate(["#000000", "#180f3d", "#440f76", "#721f81", "#9e2f7f", "#cd4071",
                                            "#f1605d", "#fd9668", "#feca8d", "#fcfdbf"])]
FONT = dict(family="Source Sans Pro, Helvetica, Arial, sans-serif")
BOTTOM_LEGEND = dict(orientation="h", yanchor="top", y=-0.14, x=0, title_text="class ")


def class_colors(classes: Sequence[str]) -> dict[str, str]:
    return {c: CLASS_PALETTE[i % len(CLASS_PALETTE)] for i, c in enumerate(classes)}


def _base(fig: go.Figure, height: int, **kw) -> go.Figure:
    layout = dict(height=height, margin=dict(l=10, r=10, t=40, b=10), font=FONT,
                  legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    layout.update({k: v for k, v in kw.items() if v is not None})
    fig.update_layout(**layout)
    return fig


# ---------------------------------------------------------------------------------------------------------
# home: the divide-and-conquer idea
# ---------------------------------------------------------------------------------------------------------
def divide_and_conquer_figure(ex: dict[str, Any]) -> go.Figure:
    """Waveform cut into overlapping snippets (top), each snippet's class scores (bottom), summed into the
    track's class (right). ``ex`` comes from :func:`core.synth.divide_and_conquer_example`."""
    classes, scores, total = ex["classes"], np.asarray(ex["scores"]), np.asarray(ex["total"])
    starts, ends = np.asarray(ex["starts"]), np.asarray(ex["ends"])
    colors = class_colors(classes)
    n = len(starts)
    fig = make_subplots(rows=2, cols=2, column_widths=[0.78, 0.22], row_heights=[0.52, 0.48],
                        specs=[[{}, {"rowspan": 2}], [{}, None]], shared_xaxes=True,
                        horizontal_spacing=0.07, vertical_spacing=0.08,
                        subplot_titles=(f"1 · the track, cut into {ex['snippet_s']:g} s snippets overlapping by "
                                        f"{ex['overlap_s']:g} s",
                                        "3 · votes summed",
                                        "2 · every snippet votes (class scores)"))
    fig.add_trace(go.Scatter(x=ex["wave_t"], y=ex["wave_y"], mode="lines", line=dict(color="#8a8f98", width=0.7),
                             name="waveform", showlegend=False, hoverinfo="skip"), row=1, col=1)
    a, b = ex["intruder_span"]
    fig.add_vrect(x0=a, x1=b, fillcolor="#E45756", opacity=0.10, line_width=0, layer="below", row=1, col=1)
    fig.add_annotation(x=(a + b) / 2, y=1.1, text=f"a passage that sounds like “{ex['intruder_class']}”",
                       showarrow=False, font=dict(size=11, color="#b33"), row=1, col=1)
    for i, (s, e) in enumerate(zip(starts, ends)):
        lane = -1.35 - 0.32 * (i % 2)
        win = classes[int(np.argmax(scores[i]))]
        fig.add_trace(go.Scatter(
            x=[s, e], y=[lane, lane], mode="lines+markers", line=dict(color=colors[win], width=7),
            marker=dict(symbol="line-ns", size=12, line=dict(width=2, color=colors[win])), showlegend=False,
            hovertemplate=f"snippet {i + 1}: {s:.1f}–{e:.1f} s<br>votes for {win}<extra></extra>"), row=1, col=1)
    for k, c in enumerate(classes):
        fig.add_trace(go.Bar(
            x=(starts + ends) / 2, y=scores[:, k], width=(ends - starts) * 0.55, name=c,
            marker_color=colors[c], legendgroup=c,
            customdata=np.stack([starts, ends], axis=1),
            hovertemplate=f"{c}: %{{y:.2f}}<br>snippet %{{customdata[0]:.1f}}–%{{customdata[1]:.1f}} s<extra></extra>"),
            row=2, col=1)
    order = np.argsort(total)
    fig.add_trace(go.Bar(
        x=total[order], y=[classes[i] for i in order], orientation="h", showlegend=False,
        marker_color=[colors[classes[i]] for i in order],
        text=[f"{total[i]:.1f}" for i in order], textposition="outside",
        hovertemplate="%{y}: sum of scores %{x:.2f}<extra></extra>"), row=1, col=2)
    winner = classes[int(np.argmax(total))]
    fig.add_annotation(text=f"track → <b>{winner}</b><br>{total.max() / n:.0%} of the votes", xref="x2 domain",
                       yref="y2 domain", x=0.98, y=0.03, xanchor="right", yanchor="bottom", showarrow=False,
                       align="right", font=dict(size=14), bgcolor="rgba(255,255,255,0.85)")
    fig.update_layout(barmode="stack", bargap=0)
    fig.update_yaxes(visible=False, range=[-1.85, 1.25], row=1, col=1)
    fig.update_yaxes(title_text="score", range=[0, 1.02], row=2, col=1)
    fig.update_xaxes(range=[-0.2, ex["duration_s"] + 0.2], dtick=ex["snippet_s"] - ex["overlap_s"], col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_xaxes(title_text="sum of scores", range=[0, max(total.max() * 1.3, 1)], row=1, col=2)
    return _base(fig, 500, legend=BOTTOM_LEGEND, margin=dict(l=10, r=10, t=40, b=40))


# ---------------------------------------------------------------------------------------------------------
# demo: window votes
# ---------------------------------------------------------------------------------------------------------
def vote_figure(classes: Sequence[str], window_scores: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                hop_s: float, selected: int | None = None, aggregated: np.ndarray | None = None,
                aggregation_label: str = "sum of scores") -> go.Figure:
    """One stacked column per window along time (left, top), the running total per class below it and the
    aggregate per class on the right. Traces 0..C-1 are the window columns (selectable points)."""
    S = np.asarray(window_scores, dtype=float)
    n, C = S.shape
    colors = class_colors(classes)
    centers = (np.asarray(starts) + np.asarray(ends)) / 2
    width = max(min(hop_s, float(np.min(ends - starts)) if n else hop_s) * 0.85, 0.05)
    cum = np.cumsum(S, axis=0)
    agg = S.sum(axis=0) if aggregated is None else np.asarray(aggregated, dtype=float)
    fig = make_subplots(rows=2, cols=2, column_widths=[0.77, 0.23], row_heights=[0.6, 0.4],
                        specs=[[{}, {"rowspan": 2}], [{}, None]], shared_xaxes=True,
                        horizontal_spacing=0.08, vertical_spacing=0.09,
                        subplot_titles=("class scores of each window (click a column to hear it)",
                                        aggregation_label, "running total per class"))
    span = np.stack([np.asarray(starts), np.asarray(ends), np.arange(1, n + 1)], axis=1)
    line_width = [2.5 if selected is not None and i == selected else 0 for i in range(n)]
    for k, c in enumerate(classes):
        fig.add_trace(go.Bar(
            x=centers, y=S[:, k], width=width, name=c, marker_color=colors[c], legendgroup=c,
            marker_line=dict(color="#111", width=line_width), customdata=span,
            hovertemplate=(f"<b>window %{{customdata[2]:.0f}}</b>: %{{customdata[0]:.1f}}–%{{customdata[1]:.1f}} s"
                           f"<br>{c}: %{{y:.2f}}<extra></extra>")), row=1, col=1)
    for k, c in enumerate(classes):
        fig.add_trace(go.Scatter(
            x=np.asarray(ends), y=cum[:, k], mode="lines", line=dict(color=colors[c], width=2), name=c,
            legendgroup=c, showlegend=False,
            hovertemplate=f"{c}: %{{y:.2f}} after %{{x:.1f}} s<extra></extra>"), row=2, col=1)
    order = np.argsort(agg)
    # Labels always horizontal and outside the bar's end (never rotated inside a thin bar, never over a
    # neighbour), with room for them on the axis: "31.99" beside a bar of any length.
    fig.add_trace(go.Bar(
        x=agg[order], y=[classes[i] for i in order], orientation="h", showlegend=False,
        marker_color=[colors[classes[i]] for i in order],
        text=[_bar_label(agg[i]) for i in order], textposition="outside", textangle=0, constraintext="none",
        cliponaxis=False, textfont=dict(size=12), hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=2)
    lo, hi = float(min(agg.min(), 0.0)), float(max(agg.max(), 0.0))
    pad = 0.42 * max(hi - lo, 1e-9)  # label room (~6 characters at the panel's width)
    fig.update_xaxes(range=[lo - (pad if lo < 0 else 0), hi + (pad if hi > 0 else 0.05 * (hi - lo))],
                     zeroline=True, row=1, col=2)
    if selected is not None and 0 <= selected < n:
        fig.add_vrect(x0=float(starts[selected]), x1=float(ends[selected]), fillcolor="#FFD54F", opacity=0.35,
                      line_width=0, layer="below", row=1, col=1)
    fig.update_layout(barmode="stack", bargap=0.05)
    fig.update_yaxes(title_text="score", range=[0, 1.0], row=1, col=1)
    fig.update_yaxes(title_text="sum", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    return _base(fig, 540, legend=BOTTOM_LEGEND, margin=dict(l=10, r=10, t=40, b=40))


def _bar_label(v: float) -> str:
    """Short value label: 2 decimals, fewer for large magnitudes (at most 6 characters in practice)."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


# ---------------------------------------------------------------------------------------------------------
# data page
# ---------------------------------------------------------------------------------------------------------
def counts_figure(counts, classes: Sequence[str], what: str = "tracks") -> go.Figure:
    """Tracks (or snippets) per class, stacked by split; ``counts`` is
    :meth:`core.dataset.Dataset.counts` (columns class, split, tracks, snippets)."""
    fig = go.Figure()
    for split, color in SPLIT_COLORS.items():
        sub = counts[counts["split"] == split].set_index("class")[what]
        fig.add_trace(go.Bar(x=list(classes), y=[int(sub.get(c, 0)) for c in classes], name=split,
                             marker_color=color, hovertemplate=f"{split} · %{{x}}: %{{y}} {what}<extra></extra>"))
    fig.update_layout(barmode="stack", yaxis_title=what, xaxis_title="class", legend_traceorder="normal")
    return _base(fig, 330)


def waveform_figure(t: np.ndarray, y: np.ndarray, starts: Sequence[float], snippet_s: float,
                    selected: int | None = None, title: str = "") -> go.Figure:
    """A downsampled waveform with the snippets marked as alternating bands below it."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=y, mode="lines", line=dict(color="#6b7280", width=0.7), hoverinfo="skip",
                             showlegend=False))
    peak = float(np.max(np.abs(y))) if len(y) else 1.0
    peak = peak or 1.0
    for i, s in enumerate(starts):
        lane = -peak * (1.25 + 0.25 * (i % 2))
        sel = selected is not None and i == selected
        fig.add_trace(go.Scatter(
            x=[s, s + snippet_s], y=[lane, lane], mode="lines", showlegend=False,
            line=dict(color="#E45756" if sel else "#4C78A8", width=9 if sel else 5),
            hovertemplate=f"snippet {i + 1}: {s:.1f}–{s + snippet_s:.1f} s<extra></extra>"))
        if sel:
            fig.add_vrect(x0=s, x1=s + snippet_s, fillcolor="#E45756", opacity=0.12, line_width=0)
    fig.update_yaxes(visible=False)
    fig.update_xaxes(title_text="time (s)")
    return _base(fig, 260, title=dict(text=title, x=0, font=dict(size=14)) if title else None,
                 margin=dict(l=10, r=10, t=36 if title else 10, b=10))


def mel_figure(mel: np.ndarray, sr: int, hop: int, start_s: float = 0.0, title: str = "") -> go.Figure:
    """Heatmap of a ``(frames, n_mels)`` log-mel spectrogram (time on x)."""
    frames, n_mels = mel.shape
    t = start_s + np.arange(frames) * hop / sr
    zmax = float(np.max(mel)) if mel.size else 0.0
    zmin = max(float(np.min(mel)), zmax - 80.0) if mel.size else 0.0  # an 80 dB window: floor bins stay black
    fig = go.Figure(go.Heatmap(z=mel.T, x=t, y=np.arange(n_mels), colorscale=MAGMA, zmin=zmin, zmax=zmax,
                               colorbar=dict(title="dB", thickness=12),
                               hovertemplate="%{x:.2f} s · mel band %{y}: %{z:.1f} dB<extra></extra>"))
    fig.update_xaxes(title_text="time (s)")
    fig.update_yaxes(title_text="mel band")
    return _base(fig, 300, title=dict(text=title, x=0, font=dict(size=14)) if title else None)


# ---------------------------------------------------------------------------------------------------------
# experiment page
# ---------------------------------------------------------------------------------------------------------
# the headline's bar groups and bands come from the kind table (ui.text.headline_groups / band_labels): kinds of
# colour "reference" (the baseline, the pretrained-embedding classifier) are drawn lighter on a shaded band of
# their own, never mistaken for the article's CRNNs
LAB_COLORS = {"val": "#4C78A8", "test": "#F58518"}
BASELINE_COLORS = {"val": "#9FBAD6", "test": "#F8C08A"}  # lighter tints: the reference, not the model
BASELINE_BAND = "#EEF1F5"
PUBLISHED_COLOR = "#DADADA"


def headline_figure(summary, published: dict[str, Any] | None, source_label: str = "this lab") -> go.Figure:
    """Mean ± SD accuracy over seeds per approach (val and test) beside the article's published figures.

    ``summary`` is ``core.store.summary_frame``; ``published`` is ``core.reproduce.PUBLISHED``."""
    # the approaches that ran (a small-data experiment without the 30 s CRNN shows no empty 30 s column); with
    # nothing at all, the article's three
    all_groups, bands = headline_groups(), band_labels()
    groups = [g for g in all_groups if ((summary["kind"] == g[0]) & (summary["level"] == g[1])).any()] \
        or [g for g in all_groups if g[0] not in bands]
    x = [g[2] for g in groups]
    # explicit bar positions, so that each group is centred on its label: the baseline's groups have no
    # published bar and so two bars, the others three
    slots = [["val", "test"] + (["published"] if published and kind not in bands else []) for kind, _, _ in groups]
    width = 0.78 / max(len(s) for s in slots)

    def place(slot: str) -> dict[str, list[float]]:
        return {"width": [width] * len(groups),
                "offset": [(-len(s) / 2 + (s.index(slot) if slot in s else 0)) * width for s in slots]}

    fig = go.Figure()
    for split in ("val", "test"):
        means, sds, ns = [], [], []
        for kind, level, _ in groups:
            row = summary[(summary["kind"] == kind) & (summary["level"] == level) & (summary["split"] == split)]
            means.append(float(row["accuracy_mean"].iloc[0]) if len(row) else None)
            sds.append(float(row["accuracy_sd"].iloc[0]) if len(row) else None)
            ns.append(int(row["n_seeds"].iloc[0]) if len(row) else 0)
        lin = [g[0] in bands for g in groups]
        fig.add_trace(go.Bar(
            x=x, y=means, name=f"{source_label} · {'validation' if split == 'val' else 'test'}", **place(split),
            marker_color=[BASELINE_COLORS[split] if is_lin else LAB_COLORS[split] for is_lin in lin],
            error_y=dict(type="data", array=sds, visible=True, thickness=1.5),
            text=[f"{m:.1%}" if m is not None else "" for m in means], textposition="inside", textangle=0,
            insidetextanchor="start", textfont=dict(size=11, color=["#222" if is_lin else "white" for is_lin in lin]),
            customdata=np.stack([np.asarray([s if s is not None else np.nan for s in sds]), ns], axis=1),
            hovertemplate="%{x}<br>%{y:.1%} ± %{customdata[0]:.1%} over %{customdata[1]:.0f} seeds<extra>"
                          + split + "</extra>"))
    if published:
        seg = published["segment_best_val"]
        track = seg + published["track_gain_points"] / 100
        pub = {"segment": (seg, None, f"{seg:.1%}: best validation accuracy of the snippet CRNN"),
               "track_sum": (track, None, f"about +{published['track_gain_points']:g} points over segment level "
                                          f"(≈ {track:.0%})"),
               "full": (published["full_mean"], published["full_sd"],
                        f"{published['full_mean']:.1%} ± {published['full_sd']:.1%} over runs")}
        ys, es, hs, texts = [], [], [], []
        for kind, level, _ in groups:
            v = pub.get(level) if kind not in bands else None
            ys.append(v[0] if v else None)
            es.append(v[1] or 0 if v else 0)
            hs.append(v[2] if v else "")
            texts.append(("≈" if level == "track_sum" else "") + f"{v[0]:.1%}" if v else "")
        fig.add_trace(go.Bar(
            x=x, y=ys, name="published (Hilsdorf 2022, full GTZAN)", **place("published"),
            marker_color=PUBLISHED_COLOR,
            marker_pattern_shape="/", marker_pattern_fgcolor="#A8A8A8", error_y=dict(type="data", array=es,
                                                                                   visible=True, thickness=1.5),
            text=texts, textposition="inside", textangle=0, insidetextanchor="start", hovertext=hs,
            textfont=dict(size=11, color="#222"),
            hovertemplate="%{x}<br>published: %{hovertext}<extra>Hilsdorf 2022</extra>"))
    for kind, label in bands.items():  # each on a shaded band of its own, never mistaken for the CRNNs
        idx = [i for i, g in enumerate(groups) if g[0] == kind]
        if not idx:
            continue
        fig.add_shape(type="rect", xref="x", yref="paper", x0=idx[0] - 0.5, x1=idx[-1] + 0.5, y0=0, y1=1,
                      fillcolor=BASELINE_BAND, line_width=0, layer="below")
        fig.add_annotation(x=(idx[0] + idx[-1]) / 2, y=0.985, xref="x", yref="paper", yanchor="top",
                           showarrow=False, text=label, font=dict(size=12, color="#444"))
    fig.update_layout(barmode="group", uniformtext=dict(minsize=9, mode="hide"),
                      yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1.05]))
    return _base(fig, 420)


def curves_figure(histories: dict[str, list[dict]]) -> go.Figure:
    """Loss and accuracy per epoch (train dashed, validation solid), one colour per run label."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.08)
    for i, (label, hist) in enumerate(histories.items()):
        if not hist:
            continue
        color = CLASS_PALETTE[i % len(CLASS_PALETTE)]
        ep = [h["epoch"] for h in hist]
        for col, key in ((1, "loss"), (2, "accuracy")):
            for prefix, dash in (("", "dot"), ("val_", "solid")):
                fig.add_trace(go.Scatter(
                    x=ep, y=[h.get(prefix + key) for h in hist], mode="lines+markers" if len(ep) < 30 else "lines",
                    line=dict(color=color, dash=dash, width=2 if prefix else 1.3), marker=dict(size=4),
                    name=label, legendgroup=label, showlegend=(col == 1 and prefix == "val_"),
                    hovertemplate=f"{label} · {'validation' if prefix else 'training'} {key}<br>"
                                  "epoch %{x}: %{y:.3f}<extra></extra>"), row=1, col=col)
    n_ep = max((len(h) for h in histories.values()), default=0)
    fig.update_xaxes(title_text="epoch", dtick=1 if n_ep <= 15 else None, rangemode="tozero" if n_ep > 15 else None)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=2)
    # above the subplot titles: below the plots it ran into the legend once the runs (folds) filled two rows
    fig.add_annotation(text="solid: validation · dotted: training", xref="paper", yref="paper", x=1, y=1.13,
                       yanchor="bottom", showarrow=False, font=dict(size=11, color="#666"), xanchor="right")
    legend = dict(BOTTOM_LEGEND, title_text="", y=-0.22)
    return _base(fig, 380, legend=legend, margin=dict(l=10, r=10, t=64, b=40))


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> go.Figure:
    """Row-normalised confusion matrix (rows: true class), counts in the cells."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    text = [[f"{int(cm[i, j])}" if cm[i, j] else "" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=share, x=list(classes), y=list(classes), colorscale="Blues", zmin=0, zmax=1, text=text,
        texttemplate="%{text}", colorbar=dict(title="share of row", tickformat=".0%", thickness=12),
        hovertemplate="true %{y} → predicted %{x}<br>%{text} items (%{z:.0%} of the row)<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="true class")
    fig.update_xaxes(title_text="predicted class", side="bottom")
    n = len(classes)
    return _base(fig, max(320, 40 * n + 140), title=dict(text=title, x=0, font=dict(size=14)) if title else None)


def aggregation_figure(summary) -> go.Figure:
    """Segment level vs the three track-level aggregations, mean ± SD, val and test: the kinds whose
    aggregations are compared (``core.kinds``: the snippet CRNN and the linear baseline, lighter bars)."""
    levels = [("segment", "segment level"), ("track_sum", "sum of scores"), ("track_vote", "majority vote"),
              ("track_logprob", "mean log-probability")]
    lab = {k.key: k.colour == "lab" for k in kinds()}
    present = [k.key for k in kinds() if k.aggregations and (summary["kind"] == k.key).any()]
    fig = go.Figure()
    for kind in present:
        for split in ("val", "test"):
            sub = summary[(summary["kind"] == kind) & (summary["split"] == split)]
            means, sds = [], []
            for lvl, _ in levels:
                r = sub[sub["level"] == lvl]
                means.append(float(r["accuracy_mean"].iloc[0]) if len(r) else None)
                sds.append(float(r["accuracy_sd"].iloc[0]) if len(r) else None)
            split_name = "validation" if split == "val" else "test"
            name = split_name if len(present) == 1 else \
                f"{kind_label(kind)} · {split_name}"
            color = (LAB_COLORS if lab[kind] else BASELINE_COLORS)[split]
            fig.add_trace(go.Bar(x=[n for _, n in levels], y=means, name=name, marker_color=color,
                                 error_y=dict(type="data", array=sds, visible=True),
                                 text=[f"{m:.1%}" if m is not None else "" for m in means], textposition="inside",
                                 insidetextanchor="start",
                                 textfont=dict(color="white" if lab[kind] else "#222"),
                                 hovertemplate="%{x}: %{y:.1%}<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group", uniformtext=dict(minsize=9, mode="hide"),
                      yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1.08]))
    return _base(fig, 360)


def envelope(y: np.ndarray, sr: int, points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A light min/max envelope of a waveform for plotting (``2 * points`` values at most)."""
    if y.size <= 2 * points:
        return np.arange(y.size) / sr, y
    k = y.size // points
    blocks = y[: k * points].reshape(points, k)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    t = (np.arange(points) * k + k / 2) / sr
    return np.repeat(t, 2), np.stack([lo, hi], axis=1).ravel()
