"""The report's HTML tables: the stage table (with the all-background floor), the per-class
IoU table (with each stage's change against the baseline CAM and the dead-class flag of
RITC's guard), and the QAPE corpus as the top phrases of each class.

All writers take plain tables and write one self-contained HTML page atomically.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from qaclims.core.io import PathLike, atomic_path

STYLE = (
    "<style>body{font-family:sans-serif;font-size:14px}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    "th{background:#eee}td.l,th.l{text-align:left}"
    "tr.floor td{color:#777;font-style:italic}td.bad{background:#fbd5d5}"
    "td.good{background:#d5f0d5}td.flag{background:#f8c471;font-weight:bold}</style>"
)

#: (heading, summary key, shown as %) of the stage table
STAGE_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("Stage", "stage", False),
    ("Split", "split", False),
    ("Images", "num_images", False),
    ("mIoU (%)", "miou", True),
    ("Best-threshold mIoU (%, GT-tuned)", "best_miou", True),
    ("Coverage (%)", "coverage", True),
)


def _cell(value: Any, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if percent:
        return f"{100 * float(value):.2f}"
    return str(value)


def _page(title: str, body: str, out_html: PathLike) -> None:
    doc = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title>{STYLE}</head><body>\n<h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n"
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(doc, encoding="utf-8")


def stage_table_html(
    rows: Sequence[Mapping[str, Any]],
    out_html: PathLike,
    title: str = "",
    notes: Sequence[str] = (),
) -> None:
    """Per-stage metrics as an HTML table.

    Args:
        rows: one mapping per stage with keys ``stage, split, num_images, miou,
            best_miou, coverage`` (the evaluation summaries plus ``stage``; metrics in
            [0, 1], shown in % with 2 decimals; absent / None / NaN shown as "–"). The
            first row's ``all_background_miou`` (if any) adds a last, greyed row: the mIoU
            of predicting background everywhere, the floor every stage is above.
        out_html: HTML path.
        title: page heading.
        notes: sentences shown below the table, one paragraph each (escaped).
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in STAGE_COLUMNS)

    def tr(r: Mapping[str, Any], cls: str = "") -> str:
        cells = "".join(
            f'<td class="l">{html.escape(_cell(r.get(k), pct))}</td>'
            if k == "stage"
            else f"<td>{html.escape(_cell(r.get(k), pct))}</td>"
            for _, k, pct in STAGE_COLUMNS
        )
        return f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>"

    body = [tr(r) for r in rows]
    if rows and rows[0].get("all_background_miou") is not None:
        first = rows[0]
        floor = {
            "stage": "all background (floor)",
            "split": first.get("split"),
            "num_images": first.get("num_images"),
            "miou": first["all_background_miou"],
        }
        body.append(tr(floor, "floor"))
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
    paras = "".join(f"\n<p>{html.escape(n)}</p>" for n in notes)
    _page(title or "QA-CLIMS stages", table + "\n</tbody>\n</table>" + paras, out_html)


def per_class_table(
    tables: Mapping[str, pd.DataFrame],
    baseline: str | None = None,
    dead: Mapping[str, float] | None = None,
    dead_warn: float = 0.5,
) -> pd.DataFrame:
    """One row per class: the IoU (%) of each stage, each stage's change against
    ``baseline`` (``Δ <stage>``), and ``dead CAMs (%)``: RITC's share of the class's pairs
    whose CAM was dead in its last epoch (``dead``: class name -> share in [0, 1]).

    ``tables``: stage label -> per-class table (``class, iou``; same classes in the same
    order). Returns a frame indexed by class name; a mean row (``mean``) last.
    """
    names = list(tables)
    out = pd.DataFrame({n: 100 * tables[n]["iou"].to_numpy(dtype=float) for n in names})
    out.index = pd.Index(list(tables[names[0]]["class"]), name="class")
    if baseline is not None and baseline in tables:
        for n in names:
            if n != baseline:
                out[f"Δ {n}"] = out[n] - out[baseline]
    out.loc["mean"] = out.mean(numeric_only=True)
    if dead:
        out["dead CAMs (%)"] = [100 * dead[c] if c in dead else math.nan for c in out.index]
        out.attrs["dead_warn"] = dead_warn
    return out


def per_class_html(table: pd.DataFrame, out_html: PathLike, title: str = "") -> None:
    """:func:`per_class_table` as HTML: IoU with 1 decimal, a change below -3 points red
    and above +3 green, a dead-CAM share at the guard's warning level flagged."""
    warn = 100 * float(table.attrs.get("dead_warn", 0.5))
    cols = list(table.columns)
    head = '<th class="l">class</th>' + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for name, r in table.iterrows():
        cells = [f'<td class="l">{html.escape(str(name))}</td>']
        for c in cols:
            v = float(r[c])
            text, cls = "–", ""
            if not math.isnan(v):
                text = f"{v:+.1f}" if c.startswith("Δ") else f"{v:.1f}"
            if c.startswith("Δ") and not math.isnan(v):
                cls = "bad" if v < -3 else "good" if v > 3 else ""
            if c == "dead CAMs (%)" and not math.isnan(v) and v >= warn:
                text, cls = f"{v:.0f} dead", "flag"
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = (
        "<p>IoU in %. Δ: change against the baseline CAM (red below −3, green above +3). "
        "dead CAMs: RITC's share of the class's image pairs whose CAM peaked below "
        f"<code>train_ritc.dead_cam</code> in its last epoch, flagged at {warn:.0f}% "
        "(<code>train_ritc.dead_warn</code>): such a class gets almost no gradient.</p>"
        if "dead CAMs (%)" in cols
        else "<p>IoU in %.</p>"
    )
    table_html = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    _page(title or "IoU per class", table_html + note, out_html)


def corpus_html(stats: pd.DataFrame | None, out_html: PathLike, top: int = 8) -> None:
    """The QAPE corpus as people read it: totals per kind, then per class its ``top`` most
    frequent foreground and background phrases with their answer counts.

    ``stats``: corpus's statistics table (``section, kind, class_name, phrase, rank, value``;
    :func:`qaclims.qape.corpus.statistics`), or None when no corpus was built."""
    if stats is None:
        _page("QAPE corpus", "<p>QAPE corpus not built in this run.</p>", out_html)
        return
    totals = stats[stats["class_name"] == ""].pivot_table(
        index="section", columns="kind", values="value", aggfunc="first"
    )
    tot = (
        "<table><thead><tr><th class='l'></th>"
        + "".join(f"<th>{html.escape(str(k))}</th>" for k in totals.columns)
        + "</tr></thead><tbody>"
    )
    for sec, r in totals.iterrows():
        vals = "".join(
            "<td>–</td>" if pd.isna(v) else f"<td>{v:.0f}</td>" if float(v).is_integer()
            else f"<td>{v:.2f}</td>" for v in r
        )  # fmt: skip
        tot += f"<tr><td class='l'>{html.escape(str(sec).replace('_', ' '))}</td>{vals}</tr>"
    tot += "</tbody></table>"
    top_rows = stats[(stats["section"] == "top_phrase") & (stats["rank"] <= top)]
    classes = list(dict.fromkeys(c for c in stats["class_name"] if c))
    body = ""
    for c in classes:
        cells = ""
        for kind in ("fg", "bg"):
            t = top_rows[(top_rows["class_name"] == c) & (top_rows["kind"] == kind)]
            t = t.sort_values("rank")
            cells += "<td class='l'>" + ", ".join(
                f"{html.escape(str(p))} <small>({v:.0f})</small>"
                for p, v in zip(t["phrase"], t["value"], strict=True)
            ) + "</td>"  # fmt: skip
        body += f"<tr><td class='l'><b>{html.escape(c)}</b></td>{cells}</tr>"
    per_class = (
        f"<h3>Top {top} phrases per class (answers giving the phrase)</h3><table><thead><tr>"
        "<th class='l'>class</th><th class='l'>foreground</th><th class='l'>background</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
    )
    _page("QAPE corpus", "<h3>Totals</h3>" + tot + per_class, out_html)
