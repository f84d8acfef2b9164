"""``iqa-plugins report SCORES.csv|jsonl -o report.html``: one self-contained HTML page over a score file.

The page needs no network and no other file: thumbnails are inline JPEG data URIs, the style and the script
are inline. It lists the images sorted by score (best first, by the metric's own direction), one column per
metric with its scale, explanation bars (the distortions judged present), a filter by distortion and by name,
sortable columns, and the files the scoring run skipped (``<scores>.errors.jsonl``).

Input: the score files ``iqa-plugins score`` writes: JSON lines whose first line may be ``{"_meta": ...}``, or
CSV with an optional ``<scores>.meta.json`` sidecar (the metadata names the metrics and their scales). Without
metadata every numeric column without a ``:`` is a metric; a column ``<metric>:<group>:<name>`` is an
explanation value (``share`` DR.Experts' expert shares, ``p`` ExIQA's distortion probabilities).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iqa_plugins.explanations import ABSENT_THRESHOLD
from iqa_plugins.scoring_output import META_KEY, errors_path, sidecar_path

__all__ = ["ScoreFile", "explanation_groups", "present_distortions", "read_score_file", "render_report",
           "add_arguments", "main"]

# Explanation groups drawn as bars, and when a distortion counts as present in an image (for the filter).
PRESENT_RULES = {
    "p": f"P(distortion) >= {ABSENT_THRESHOLD} (ExIQA: below it the distortion is absent)",
    "share": "among the image's 3 largest expert shares (DR.Experts)",
}
TOP_SHARES = 3


@dataclass
class ScoreFile:
    path: Path
    rows: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    errors: list[dict[str, str]] = field(default_factory=list)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_score_file(path: str | Path) -> ScoreFile:
    """Rows, metrics (name, score_range, lower_better, meaning) and the skipped files of a score file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score file {str(path)!r}: no such file")
    meta: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(text.splitlines()):
                    continue  # a last line cut by an interrupted run
                raise ValueError(f"{path}: line {number} is not JSON") from None
            if isinstance(record, dict) and META_KEY in record:
                meta = record[META_KEY]
            elif isinstance(record, dict) and "path" in record:
                rows.append(record)
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if rows and "path" not in rows[0]:
        raise ValueError(f"{path}: no 'path' column; is this a score file of `iqa-plugins score`?")
    if meta and meta.get("metrics"):
        metrics = [dict(m) for m in meta["metrics"]]
    else:
        columns = list(rows[0]) if rows else []
        metrics = [{"name": c} for c in columns if c != "path" and ":" not in c
                   and any(_number(r.get(c)) is not None for r in rows)]
    errors = []
    if errors_path(path).is_file():
        for line in errors_path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                errors.append({"path": str(record.get("path", "?")), "reason": str(record.get("reason", ""))})
    return ScoreFile(path, rows, metrics, errors)


def explanation_groups(row: dict[str, Any], metric: str, only_metric: bool) -> dict[str, dict[str, float]]:
    """{group: {name: value}} of one metric's explanation columns in a row."""
    groups: dict[str, dict[str, float]] = {}
    for column, value in row.items():
        parts = column.split(":", 2)
        if len(parts) == 3 and parts[0] == metric:
            group, name = parts[1], parts[2]
        elif len(parts) == 2 and only_metric:  # files written without the metric prefix
            group, name = parts
        else:
            continue
        number = _number(value)
        if number is not None:
            groups.setdefault(group, {})[name] = number
    return groups


def present_distortions(groups: dict[str, dict[str, float]]) -> list[tuple[str, float, str]]:
    """(distortion, value, group) judged present, largest first."""
    found = []
    if "p" in groups:
        found += [(n, v, "p") for n, v in groups["p"].items() if v >= ABSENT_THRESHOLD]
    if "share" in groups:
        top = sorted(groups["share"].items(), key=lambda item: -item[1])[:TOP_SHARES]
        found += [(n, v, "share") for n, v in top]
    return sorted(found, key=lambda item: -item[1])


def _thumbnail(path: str, size: int) -> str | None:
    """A JPEG data URI of the image scaled to fit ``size`` px, or None when it cannot be read."""
    from PIL import Image

    from iqa_plugins.io import ImageReadError, read_image

    try:
        array = read_image(path, min_side=1)
    except (ImageReadError, OSError):
        return None
    image = Image.fromarray((array * 255).round().clip(0, 255).astype("uint8"))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _scale_text(metric: dict[str, Any]) -> str:
    rng = metric.get("score_range")
    text = f"range {rng[0]:g} to {rng[1]:g}" if rng else "range unknown"
    if "lower_better" in metric:
        text += ", lower is better" if metric["lower_better"] else ", higher is better"
    return text


STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} .note{color:#555;max-width:70em}
table{border-collapse:collapse;margin-top:1em} th,td{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:middle}
th{background:#f3f3f3;position:sticky;top:0} th.sortable{cursor:pointer;user-select:none}
th.sortable::after{content:" \\2195";color:#999} th[aria-sort=ascending]::after{content:" \\2191";color:#000}
th[aria-sort=descending]::after{content:" \\2193";color:#000}
td.num{text-align:right;font-variant-numeric:tabular-nums} img.thumb{display:block;max-width:160px;max-height:120px}
.bar{display:flex;align-items:center;gap:6px;font-size:12px;white-space:nowrap}
.bar span.track{display:inline-block;width:80px;height:9px;background:#eee}
.bar span.fill{display:block;height:9px;background:#c0392b} .bar span.fill.share{background:#2471a3}
.score span.fill{background:#27ae60} .missing{color:#999;font-style:italic}
#controls{display:flex;gap:1em;align-items:center;margin-top:1em} #count{color:#555}
"""

SCRIPT = """
(function () {
  const table = document.getElementById('scores');
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const filter = document.getElementById('distortion');
  const search = document.getElementById('search');
  const count = document.getElementById('count');
  function apply() {
    const wanted = filter.value, text = search.value.toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const present = JSON.parse(row.dataset.present);
      const ok = (!wanted || present.includes(wanted)) && (!text || row.dataset.name.includes(text));
      row.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = shown + ' of ' + rows.length + ' images shown';
  }
  function sortBy(th, direction) {
    const key = th.dataset.key, numeric = th.dataset.type === 'number';
    for (const other of table.tHead.rows[0].cells) other.removeAttribute('aria-sort');
    th.setAttribute('aria-sort', direction > 0 ? 'ascending' : 'descending');
    const value = (row) => numeric ? parseFloat(row.dataset[key]) : row.dataset[key];
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (numeric && isNaN(x) !== isNaN(y)) return isNaN(x) ? 1 : -1;  // missing values last
      return (x < y ? -1 : x > y ? 1 : 0) * direction;
    });
    for (const row of rows) body.appendChild(row);
  }
  for (const th of table.tHead.rows[0].cells) {
    if (!th.classList.contains('sortable')) continue;
    th.addEventListener('click', () => sortBy(th, th.getAttribute('aria-sort') === 'descending' ? 1 : -1));
  }
  filter.addEventListener('change', apply);
  search.addEventListener('input', apply);
  const first = table.querySelector('th[data-default-order]');
  if (first) sortBy(first, parseInt(first.dataset.defaultOrder, 10));
  apply();
})();
"""


def _bar(name: str, value: float, group: str) -> str:
    width = max(0.0, min(1.0, value)) * 100
    return (f'<div class="bar"><span class="track"><span class="fill {group}" style="width:{width:.1f}%"></span>'
            f'</span>{html.escape(name)} {value:.2f}</div>')


def _bounds(metrics: list[dict], values: dict[str, list[float | None]]) -> dict[str, list[float]]:
    """Each metric's (lo, hi) for its bars: its score range, else the scores' own, else (0, 1)."""
    bounds = {}
    for metric in metrics:
        found = [v for v in values[metric["name"]] if v is not None]
        rng = metric.get("score_range")
        bounds[metric["name"]] = rng if rng else ([min(found), max(found)] if found else [0.0, 1.0])
    return bounds


def _score_cell(value: float | None, lo: float, hi: float) -> str:
    if value is None:
        return '<td class="num missing">-</td>'
    fraction = (value - lo) / (hi - lo) if hi > lo else 0.5
    return (f'<td class="num score"><div class="bar"><span class="track"><span class="fill" '
            f'style="width:{max(0.0, min(1.0, fraction)) * 100:.1f}%"></span></span>{value:.4g}</div></td>')


def _table_row(row: dict, index: int, names: list[str], values: dict[str, list[float | None]],
               bounds: dict[str, list[float]], thumb_size: int) -> tuple[str, set[str]]:
    """One image's table row (thumbnail, file, each metric's score and present distortions) and the
    distortions present in it."""
    path = str(row["path"])
    thumb = _thumbnail(path, thumb_size)
    picture = f'<img class="thumb" alt="" src="{thumb}">' if thumb else '<span class="missing">not readable</span>'
    cells = [f"<td>{picture}</td>", f'<td title="{html.escape(path)}">{html.escape(Path(path).name)}</td>']
    data = {"name": Path(path).name.lower()}
    present_here: set[str] = set()
    for i, metric in enumerate(names):
        value = values[metric][index]
        cells.append(_score_cell(value, *bounds[metric]))
        data[f"m{i}"] = "NaN" if value is None else repr(value)
        present = present_distortions(explanation_groups(row, metric, len(names) == 1))
        present_here.update(n for n, _, _ in present)
        cells.append("<td>" + ("".join(_bar(n, v, g) for n, v, g in present[:4]) or
                               '<span class="missing">none present</span>') + "</td>")
    attributes = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in data.items())
    return (f'<tr {attributes} data-present="{html.escape(json.dumps(sorted(present_here)))}">' + "".join(cells)
            + "</tr>"), present_here


def _headers(metrics: list[dict]) -> list[str]:
    headers = ['<th>image</th>', '<th class="sortable" data-key="name" data-type="text">file</th>']
    for i, metric in enumerate(metrics):
        default = ""
        if i == 0:  # best first: descending unless lower is better
            default = f' data-default-order="{1 if metric.get("lower_better") else -1}"'
        headers.append(f'<th class="sortable" data-key="m{i}" data-type="number"{default} '
                       f'title="{html.escape(metric.get("meaning", ""))}">{html.escape(metric["name"])}<br>'
                       f'<small>{html.escape(_scale_text(metric))}</small></th>')
        headers.append(f"<th>{html.escape(metric['name'])}: explanation</th>")
    return headers


def _errors_table(errors: list[dict]) -> str:
    if not errors:
        return ""
    items = "".join(f"<tr><td>{html.escape(e['path'])}</td><td>{html.escape(e['reason'])}</td></tr>" for e in errors)
    return (f'<h2 id="skipped">Skipped files ({len(errors)})</h2><table id="errors"><thead><tr>'
            f"<th>file</th><th>reason</th></tr></thead><tbody>{items}</tbody></table>")


def render_report(scores: ScoreFile, thumb_size: int = 160) -> str:
    """The HTML page (a string) for a read score file."""
    metrics = scores.metrics
    names = [m["name"] for m in metrics]
    values = {n: [_number(r.get(n)) for r in scores.rows] for n in names}
    bounds = _bounds(metrics, values)
    all_present: set[str] = set()
    body = []
    for index, row in enumerate(scores.rows):
        row_html, present = _table_row(row, index, names, values, bounds, thumb_size)
        body.append(row_html)
        all_present |= present
    headers = _headers(metrics)
    options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in sorted(all_present))
    cards = "".join(
        f"<li><b>{html.escape(m['name'])}</b>: {html.escape(_scale_text(m))}"
        + (f"; {html.escape(str(m['meaning']))}" if m.get("meaning") else "") + "</li>" for m in metrics)
    errors = _errors_table(scores.errors)
    rules = "; ".join(f"{group}: {rule}" for group, rule in PRESENT_RULES.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Image quality report: {html.escape(scores.path.name)}</title><style>{STYLE}</style></head>
<body><h1>Image quality: {html.escape(scores.path.name)}</h1>
<p class="note">{len(scores.rows)} images scored, {len(scores.errors)} skipped. Click a column title to sort.
A distortion counts as present when {html.escape(rules)}.</p><ul>{cards}</ul>
<div id="controls"><label>distortion <select id="distortion"><option value="">any</option>{options}</select></label>
<label>file name <input id="search" type="search" placeholder="contains..."></label><span id="count"></span></div>
<table id="scores"><thead><tr>{"".join(headers)}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>{errors}
<script>{SCRIPT}</script></body></html>
"""


# ---------------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", type=Path, help="a score file of `iqa-plugins score` (.csv or .jsonl)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write")
    parser.add_argument("--thumb-size", type=int, default=160, help="thumbnail size in pixels (default 160)")


def main(args: argparse.Namespace) -> int:
    try:
        scores = read_score_file(args.scores)
    except (OSError, ValueError) as error:
        print(f"iqa-plugins report: {error}", file=sys.stderr)
        return 2
    if not scores.rows:
        print(f"iqa-plugins report: {args.scores} holds no scored images", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_report(scores, args.thumb_size), encoding="utf-8")
    print(f"report on {len(scores.rows)} images ({len(scores.errors)} skipped) -> {args.output}")
    return 0
