"""The leaderboard as one static web page: `index.html` beside LEADERBOARD.md, written by
`rbench leaderboard` from the leaderboard.json document (schema rbench.leaderboard/2).

- Self-contained: inline CSS and JavaScript, no fonts, scripts or styles from elsewhere; a
  Content-Security-Policy forbids every network request, so the page works offline and opened
  as a file. The plots are the PNGs under plots/, linked relatively (`<img src="plots/...">`).
- Every ranked table of LEADERBOARD.md (rank, AutoAttack with its 95% interval, vs control,
  flags) and one table of every aggregated row (the compute axis included), each sortable by a
  click on a column header (again: the other direction), filtered by suite, protocol and method
  with select boxes. The filters live in the URL's fragment (`#suite=digits&method=hydra`), so a
  view can be linked.
- Records are untrusted: every text from them is HTML-escaped, nothing from them reaches the
  script (the script reads only the page's own attributes), and image names are URL-quoted.
Tested in headless Chromium by tests/test_html_board.py (`make browser` installs it).
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from pathlib import Path
from urllib.parse import quote

from rbench.report.rows import MARKS
from rbench.store.cache import atomic_write_text

PAGE = "index.html"
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
FILTERS = (("suite", "Suite"), ("protocol", "Protocol"), ("method", "Method"))


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _strong(text: str) -> str:
    """Escaped text with markdown's **bold** as <strong> (the marks of the main table)."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc(text))


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _num(value, spec: str = ".1f") -> str:
    number = _finite(value)
    return "" if number is None else format(number, spec)


def _pm(mean, std) -> str:
    shown, spread = _num(mean), _num(std)
    return f"{shown} ± {spread}" if shown and spread else shown


def _sort_value(column: str, text: str) -> float | None:
    """The number a displayed cell sorts by ("2=" -> 2, "<0.001" -> 0.001, "+1.2 (p 0.03)" ->
    1.2, "[83.3, 92.2]" -> 83.3); None for text, which sorts alphabetically."""
    if column == "rank" and text == "control":
        return 0.0
    head = text.strip().lstrip("<>[≤≥~ ").replace("−", "-")
    match = _NUMBER.match(head)
    return float(match.group()) if match else None


def _cell(text: str, sort: float | None = None, markup: str | None = None) -> str:
    attr = "" if sort is None else f' data-sort="{sort!r}"'
    return f"<td{attr}>{esc(text) if markup is None else markup}</td>"


def _row(cells: list[str], suite, protocol, method) -> str:
    attrs = f'data-suite="{esc(suite)}" data-protocol="{esc(protocol)}" data-method="{esc(method)}"'
    return f"<tr {attrs}>{''.join(cells)}</tr>"


def _table(head: list[str], body: list[str], caption: str) -> str:
    headers = "".join(f'<th scope="col" tabindex="0">{esc(h)}</th>' for h in head)
    return (
        f'<table class="sortable"><caption>{esc(caption)}</caption>'
        f"<thead><tr>{headers}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _group_protocol(group: dict, rows: list[dict]) -> str:
    key = group.get("key") or {}
    for row in rows:
        if all(str(row.get(k)) == str(v) for k, v in key.items()):
            return str(row.get("protocol", ""))
    found = re.search(r"protocol (\S+),", str(group.get("title", "")))
    return found.group(1) if found else ""


def _figure(name: str) -> str:
    src = "plots/" + quote(Path(str(name)).name)
    return f'<figure><img src="{esc(src)}" alt="{esc(name)}"></figure>'


def _group_section(group: dict, rows: list[dict]) -> str:
    key = group.get("key") or {}
    suite, protocol = key.get("suite", ""), _group_protocol(group, rows)
    main = group.get("main") or []
    head = list(main[0]) if main else []
    body = []
    for r in main:
        method = str(r.get("method", "")).split(" (")[0]
        cells = [
            _cell(str(r.get(c, "")), _sort_value(c, str(r.get(c, ""))), _strong(r.get(c, "")))
            for c in head
        ]
        body.append(_row(cells, suite, protocol, method))
    table = _table(head, body, "ranked by paired tests within each ratio") if main else ""
    figures = "".join(_figure(p) for p in group.get("plots") or [])
    return (
        f'<section data-board-section data-suite="{esc(suite)}" data-protocol="{esc(protocol)}">'
        f"<h2>{esc(group.get('title', ''))}</h2>{table}"
        f'<div class="plots">{figures}</div></section>'
    )


ALL_COLUMNS = [
    "suite",
    "protocol",
    "budget (AT-ep)",
    "ratio",
    "method",
    "variant",
    "clean %",
    "PGD %",
    "AutoAttack %",
    "95% CI",
    "worst seed AA %",
    "MACs ratio",
    "measured ratio",
    "κ geo-mean",
    "seeds",
    "flags",
]


def _marks(r: dict) -> str:
    words = []
    for mark in MARKS:
        count = r.get(f"{mark}_seeds") or 0
        if count:
            word = f"<strong>{esc(mark.replace('_', ' '))}</strong>"
            words.append(word if r.get("n_seeds") == 1 else f"{word} {count}/{r.get('n_seeds')}")
    flags = sorted(f for f in str(r.get("flags") or "").split(",") if f and f not in MARKS)
    return ", ".join(words + [esc(f) for f in flags])


def _flat_row(r: dict) -> str:
    low, high = _finite(r.get("aa_ci_low")), _finite(r.get("aa_ci_high"))
    ci = f"[{low:.1f}, {high:.1f}]" if low is not None and high is not None else ""
    protocol = f"{r.get('protocol', '')} n={r.get('n_eval', '')}"
    cells = [
        _cell(r.get("suite", "")),
        _cell(protocol),
        _cell(_num(r.get("budget_epochs"), "g"), _finite(r.get("budget_epochs"))),
        _cell(_num(r.get("ratio"), "g"), _finite(r.get("ratio"))),
        _cell(r.get("method", "")),
        _cell(r.get("variant", "")),
        _cell(
            _pm(r.get("clean_points"), r.get("clean_points_std")), _finite(r.get("clean_points"))
        ),
        _cell(_pm(r.get("pgd"), r.get("pgd_std")), _finite(r.get("pgd"))),
        _cell(_pm(r.get("autoattack"), r.get("autoattack_std")), _finite(r.get("autoattack"))),
        _cell(ci, low),
        _cell(_num(r.get("autoattack_min")), _finite(r.get("autoattack_min"))),
        _cell(_num(r.get("macs_ratio"), ".2f"), _finite(r.get("macs_ratio"))),
        _cell(_num(r.get("ratio_measured"), ".2f"), _finite(r.get("ratio_measured"))),
        _cell(_num(r.get("cond_geomean"), ".3g"), _finite(r.get("cond_geomean"))),
        _cell(str(r.get("n_seeds", "")), _finite(r.get("n_seeds"))),
        _cell("", None, _marks(r)),
    ]
    return _row(cells, r.get("suite", ""), r.get("protocol", ""), r.get("method", ""))


def _select(name: str, label: str, values: list[str]) -> str:
    options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return (
        f'<label>{esc(label)} <select data-filter="{name}" id="filter-{name}">'
        f'<option value="">all</option>{options}</select></label>'
    )


def render_page(document: dict, other_plots: list[str] = ()) -> str:
    """The page for a leaderboard.json document; `other_plots` are plots/ files no group names
    (the compute axis)."""
    rows = [r for r in document.get("rows") or [] if isinstance(r, dict)]
    groups = [g for g in document.get("groups") or [] if isinstance(g, dict)]
    values = {name: sorted({str(r.get(name, "")) for r in rows} - {""}) for name, _ in FILTERS}
    filters = "".join(_select(name, label, values[name]) for name, label in FILTERS)
    sections = "".join(_group_section(g, rows) for g in groups)
    every = _table(ALL_COLUMNS, [_flat_row(r) for r in rows], "every configuration, seeds pooled")
    extra = "".join(_figure(p) for p in other_plots)
    skipped = document.get("skipped") or []
    skipped_html = (
        f"<details><summary>{len(skipped)} record(s) skipped</summary><ul>"
        + "".join(f"<li>{esc(s)}</li>" for s in skipped)
        + "</ul></details>"
        if skipped
        else ""
    )
    body = (
        "<header><h1>rbench leaderboard</h1><p>Generated by <code>rbench leaderboard</code> "
        '(the same data: <a href="LEADERBOARD.md">LEADERBOARD.md</a>, '
        '<a href="leaderboard.csv">leaderboard.csv</a>, <a href="leaderboard.json">'
        "leaderboard.json</a>). Click a column header to sort, again for the other direction. "
        "Accuracies in %, means over seeds (± their std); the 95% interval pools every seed's "
        "points. <strong>unreliable</strong>: a gradient-masking check fired.</p>"
        f'<form class="filters" onsubmit="return false">{filters}'
        f'<output id="shown" aria-live="polite"></output></form></header>'
        f"<main>{sections or '<p>No ranked table yet.</p>'}"
        f"<section data-board-section data-all-rows><h2>Every configuration</h2>{every}"
        f'<div class="plots">{extra}</div></section>{skipped_html}</main>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy()}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>rbench leaderboard</title><style>{CSS}</style></head>"
        f"<body>{body}<script>{SCRIPT}</script></body></html>\n"
    )


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def policy() -> str:
    """The page's Content-Security-Policy: no request anywhere but its own plots, and only its
    own style and script by their hashes (a tag or handler that slipped past the escaping would
    not run)."""
    return (
        f"default-src 'none'; img-src 'self' file: data:; style-src {_digest(CSS)}; "
        f"script-src {_digest(SCRIPT)}; base-uri 'none'; form-action 'none'"
    )


def write_page(document: dict, out_dir: Path) -> Path:
    """Write out_dir/index.html for the leaderboard.json `document` rendered into `out_dir`
    (after LEADERBOARD.md, whose other plots it shows too)."""
    out_dir = Path(out_dir)
    named = {Path(str(p)).name for g in document.get("groups") or [] for p in g.get("plots") or []}
    # plots LEADERBOARD.md shows outside the ranked tables (the compute axis), never stale files
    markdown = out_dir / "LEADERBOARD.md"
    linked = (
        re.findall(r"\]\(plots/([^)\s]+)\)", markdown.read_text()) if markdown.is_file() else []
    )
    other = [
        n for n in dict.fromkeys(linked) if n not in named and (out_dir / "plots" / n).is_file()
    ]
    path = out_dir / PAGE
    atomic_write_text(path, render_page(document, other))
    return path


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 1.5rem 3rem;color:#1b1b1b}
header{padding:.5rem 0;border-bottom:1px solid #ddd}
h1{font-size:1.4rem;margin:.3rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.filters label{margin-right:1rem}.filters select{margin-left:.3rem}#shown{color:#555}
table{border-collapse:collapse;margin:.3rem 0 .8rem;font-variant-numeric:tabular-nums}
caption{text-align:left;color:#666;font-size:.85rem;padding-bottom:.2rem}
th,td{border:1px solid #d6d6d6;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafafa}td strong{color:#a11}
.plots{display:flex;flex-wrap:wrap;gap:.8rem}.plots img{max-width:520px;width:100%}
figure{margin:0}[hidden]{display:none!important}td[data-sort]{white-space:nowrap}
"""

SCRIPT = """
(function () {
  "use strict";
  var filters = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
  function wanted() {
    var want = {};
    filters.forEach(function (f) { want[f.getAttribute("data-filter")] = f.value; });
    return want;
  }
  function matches(el, want, keys) {
    return keys.every(function (k) { return !want[k] || el.getAttribute("data-" + k) === want[k]; });
  }
  function apply() {
    var want = wanted(), all = 0, shown = 0;
    document.querySelectorAll("[data-board-section]").forEach(function (section) {
      var everyRow = section.hasAttribute("data-all-rows");
      var open = everyRow || matches(section, want, ["suite", "protocol"]), visible = 0;
      section.querySelectorAll("tbody tr").forEach(function (tr) {
        var show = open && matches(tr, want, ["suite", "protocol", "method"]);
        tr.hidden = !show;
        if (show) { visible += 1; }
        if (everyRow) { all += 1; if (show) { shown += 1; } }
      });
      section.hidden = !everyRow && visible === 0;
    });
    document.getElementById("shown").textContent = shown + " of " + all + " configurations";
    var parts = filters.filter(function (f) { return f.value; }).map(function (f) {
      return f.getAttribute("data-filter") + "=" + encodeURIComponent(f.value);
    });
    try {  /* the view in the fragment, so it can be linked; not fatal where refused */
      history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
    } catch (e) { /* a browser that refuses it for file: pages */ }
  }
  function fromHash() {
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var kv = pair.split("="), f = document.getElementById("filter-" + kv[0]);
      if (f && kv.length === 2) {
        var v = decodeURIComponent(kv[1]);
        if (Array.prototype.some.call(f.options, function (o) { return o.value === v; })) {
          f.value = v;
        }
      }
    });
  }
  function key(td) {
    var s = td.getAttribute("data-sort");
    if (s !== null) { return { num: parseFloat(s), text: "" }; }
    var t = td.textContent.trim();
    return { num: null, text: t };
  }
  function compare(a, b) {
    var ea = a.num === null && a.text === "", eb = b.num === null && b.text === "";
    if (ea || eb) { return ea === eb ? 0 : (ea ? 1 : -1); }
    if (a.num !== null && b.num !== null) { return a.num - b.num; }
    if (a.num !== null) { return -1; }
    if (b.num !== null) { return 1; }
    return a.text.localeCompare(b.text, undefined, { numeric: true });
  }
  function sortBy(th) {
    var row = th.parentNode, index = Array.prototype.indexOf.call(row.children, th);
    var table = th.closest("table"), body = table.tBodies[0];
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    row.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows).map(function (tr, i) {
      return { tr: tr, key: key(tr.cells[index]), i: i };
    });
    rows.sort(function (a, b) {
      var ea = a.key.num === null && a.key.text === "", eb = b.key.num === null && b.key.text === "";
      if (ea || eb) { return ea === eb ? a.i - b.i : (ea ? 1 : -1); }
      return sign * compare(a.key, b.key) || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.tr); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });
  filters.forEach(function (f) {
    f.value = "";  /* the fragment alone says what is shown (no form state restored on reload) */
    f.addEventListener("change", apply);
  });
  fromHash();
  apply();
})();
"""
