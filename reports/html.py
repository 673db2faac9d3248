"""One self-contained HTML page: sortable leaderboard tables, the plots, image grids and provenance.

Self-contained means one file that works offline and can be attached to a CI job or mailed: CSS and
JavaScript are inline, images are embedded as base64 PNG, nothing is fetched from the network.
Sorting: click a column header (again to reverse); cells sort on their numeric value, missing last. A
link ending in ``#sort=N`` (``#sort=N-desc``) opens the page sorted on column N.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from reports.entries import command_line
from reports.tables import METRIC_DEFINITIONS, WideTable, best_value, fmt_interval, fmt_value

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
padding:1.5rem;color:#222;line-height:1.4}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem}.sub{color:#666;margin-top:0}
div.scroll{overflow-x:auto;max-width:100%}
table.board{border-collapse:collapse;font-size:.8rem;margin:.5rem 0 1rem}
table.board th,table.board td{padding:.3rem .45rem;border-bottom:1px solid #e4e4e4;text-align:right;
white-space:nowrap}
table.board th:first-child,table.board td:first-child{text-align:left;font-weight:600}
table.board thead th{cursor:pointer;user-select:none;background:#f5f5f7;position:sticky;top:0}
table.board thead th:hover{background:#e8e8ef}
table.board th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em}
table.board th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
td .ci{color:#777;font-size:.75rem;display:block}td.best{background:#eaf6ea}
td.failed{color:#b00020;font-weight:600;background:#fdecee}
.group-robustness{border-top:3px solid #d62728}.group-utility{border-top:3px solid #2ca02c}
.group-cost{border-top:3px solid #1f77b4}
figure{margin:.5rem 1% 1.2rem 0;display:inline-block;vertical-align:top;max-width:48%}
figure.wide{max-width:98%}
figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.8rem;color:#555}
.notes{font-size:.8rem;color:#555}details{margin:.4rem 0}summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f9;padding:.6rem;overflow:auto;font-size:.75rem;max-height:24rem}
table.kv td{padding:.1rem .6rem;font-size:.8rem;border-bottom:1px solid #eee}
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-sort');
    if (v === null || v === '') { return null; }
    var n = Number(v);
    return isNaN(n) ? v : n;
  }
  document.querySelectorAll('table.board').forEach(function (table) {
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function (th, index) {
      th.addEventListener('click', function () {
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[index]), y = key(b.cells[index]);
          if (x === null && y === null) { return 0; }
          if (x === null) { return 1; }
          if (y === null) { return -1; }
          var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  // A link ending in #sort=N (or #sort=N-desc) opens with every table sorted on column N.
  var wanted = /^#sort=(\d+)(-desc)?$/.exec(window.location.hash);
  if (wanted) {
    document.querySelectorAll('table.board').forEach(function (table) {
      var th = table.querySelectorAll('thead th')[Number(wanted[1])];
      if (th) { th.click(); if (wanted[2]) { th.click(); } }
    });
  }
  // A self-check that a reader (or a headless browser in a test) can see: how many figures decoded.
  window.addEventListener('load', function () {
    var images = document.querySelectorAll('figure img');
    var shown = 0;
    images.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { shown += 1; } });
    var status = document.getElementById('page-status');
    status.setAttribute('data-figures', String(images.length));
    status.setAttribute('data-figures-shown', String(shown));
    status.setAttribute('data-table-rows', String(document.querySelectorAll('table.board tbody tr').length));
    status.textContent = shown + ' of ' + images.length + ' figures shown';
  });
})();
"""


@dataclass
class Figure:
    path: Path  # PNG
    caption: str
    pdf: Path | None = None


@dataclass
class Section:
    table: WideTable
    figures: list[Figure] = field(default_factory=list)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_table(table: WideTable) -> str:
    head = ['<th title="defense" data-sort="">defense</th>']
    for c in table.columns:
        head.append(f'<th class="group-{c.group}" title="{html.escape(c.help)}">{html.escape(c.label)}</th>')
    body = []
    for defense in table.defenses:
        cells = [f'<td data-sort="{html.escape(defense)}">{html.escape(defense)}</td>']
        for c in table.columns:
            e = table.get(defense, c.key)
            if table.is_failed(defense, c.key):  # the attack raised: no number, ever
                n = f'<span class="ci">n={e.n}</span>' if e is not None and e.n else ""
                cells.append(f'<td class="failed" data-sort="" title="the attack raised: no value">failed{n}</td>')
                continue
            if e is None or math.isnan(e.value):
                cells.append('<td data-sort="">–</td>')
                continue
            interval = fmt_interval(e, c.kind)
            extra = f'<span class="ci">{html.escape(interval)}{" n=" + str(e.n) if e.n else ""}</span>'
            best = best_value(table, c.key, c.better)
            css = ' class="best"' if defense != "none" and best is not None and e.value == best else ""
            cells.append(f'<td{css} data-sort="{e.value!r}">{html.escape(fmt_value(e, c.kind))}{extra}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="board" data-task="{html.escape(table.task)}"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _figure(figure: Figure, css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return (f"<figure{attribute}>{_img(figure.path, figure.caption)}"
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def _kv(mapping: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in mapping.items())
    return f'<table class="kv">{rows}</table>'


def render_page(title: str, sections: list[Section], overview: list[Figure], grids: list[Figure],
                provenance: dict, config_text: str, judges: dict[str, str], source: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">from <code>{html.escape(source)}</code> · <span id="page-status">loading</span></p>',
        f'<p class="notes">{html.escape(METRIC_DEFINITIONS)} Click a column header to sort; the best defense '
        "per column (the undefended model excluded) is shaded.</p>",
    ]
    for section in sections:
        table = section.table
        parts.append(f"<h2>{html.escape(table.task)} on {html.escape(table.model)}</h2>")
        if table.judge:
            parts.append(f'<p class="notes">Judge: {html.escape(table.judge)}</p>')
        parts.append(f'<div class="scroll">{render_table(table)}</div>')
        parts += [f'<p class="notes">{html.escape(n)}</p>' for n in table.notes]
        for figure in section.figures:
            parts.append(_figure(figure))
    if overview:
        parts.append("<h2>Robustness vs. utility</h2>")
        for figure in overview:
            parts.append(_figure(figure, "wide"))
    if grids:
        parts.append("<h2>Image grids</h2>")
        for figure in grids:
            parts.append(_figure(figure))
    parts.append("<h2>Provenance</h2>")
    git = provenance.get("git", {})
    summary = {"commit": git.get("commit"), "uncommitted changes": git.get("dirty"),
               "created (UTC)": provenance.get("created_utc"), "python": provenance.get("python"),
               "platform": provenance.get("platform"), "device": json.dumps(provenance.get("device", {}))}
    if provenance.get("command"):
        summary["command"] = command_line(provenance)
    parts.append(_kv({k: v for k, v in summary.items() if v is not None}))
    if judges:
        parts.append("<h3>Judges</h3>" + _kv(judges))
    if provenance.get("packages"):
        parts.append("<details><summary>Package versions</summary>" + _kv(provenance["packages"]) + "</details>")
    if provenance.get("model"):
        parts.append("<details><summary>Model</summary><pre>"
                     + html.escape(json.dumps(provenance["model"], indent=2, default=str)) + "</pre></details>")
    if provenance.get("sources"):
        parts.append("<details><summary>Entry sources</summary><pre>"
                     + html.escape(json.dumps(provenance["sources"], indent=2, default=str)) + "</pre></details>")
    if config_text:
        parts.append("<details><summary>Resolved config</summary><pre>" + html.escape(config_text)
                     + "</pre></details>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
