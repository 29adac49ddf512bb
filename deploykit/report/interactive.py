"""The parts of the search report a person works with: the recommendation up front, the per-runtime
alternatives, a candidate table sortable by any column and filterable by text (a few lines of inline
JavaScript, no CDN: the report stays one self-contained file), and the rejected or failed
candidates folded away with their reasons cut to one line each.

The script also reads `#filter=TEXT&sort=COL` (COL negative: descending) from the address, so a
link can open the report pre-filtered, and a headless browser can check that sorting works."""

from __future__ import annotations

import html
import re
from typing import Any, Mapping, Sequence

CSS = """.rec{border:2px solid #2a7;border-radius:6px;padding:10px 14px;margin:10px 0 16px;
background:#f3fbf6;max-width:1100px}.rec.none{border-color:#c44;background:#fdf3f3}
.rec .big{font-size:20px;font-weight:600}.muted{color:#666}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";
color:#aaa}#filter{padding:4px 8px;width:320px;margin:4px 0}
details{margin:6px 0 18px}summary{cursor:pointer;font-weight:600}
td.reason{max-width:640px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"""

# sorts by data-v (a number) when every cell of the column has one, else by text; filters rows by
# text; applies #filter=...&sort=... on load
JS = """<script>
(function(){
const t=document.getElementById('cands'); if(!t) return;
const body=t.tBodies[0], heads=t.tHead.rows[0].cells;
function key(td){const v=td.getAttribute('data-v');return v===null||v===''?null:parseFloat(v);}
function sortBy(col,desc){
  const rows=Array.from(body.rows);
  const num=rows.every(r=>key(r.cells[col])!==null||r.cells[col].textContent.trim()==='-');
  rows.sort((a,b)=>{let x,y;
    if(num){x=key(a.cells[col]);y=key(b.cells[col]);
      if(x===null)return 1; if(y===null)return -1;}
    else{x=a.cells[col].textContent;y=b.cells[col].textContent;}
    const c=x<y?-1:x>y?1:0; return desc?-c:c;});
  rows.forEach(r=>body.appendChild(r));
  t.setAttribute('data-sorted',(desc?'-':'')+col);
}
function filter(q){q=q.toLowerCase();let n=0;
  for(const r of body.rows){
    const show=!q||(r.textContent+' '+(r.dataset.q||'')).toLowerCase().includes(q);
    r.style.display=show?'':'none'; if(show)n++;}
  document.getElementById('shown').textContent=n;}
Array.from(heads).forEach((th,i)=>th.addEventListener('click',()=>{
  const cur=t.getAttribute('data-sorted'); sortBy(i,cur===String(i));}));
const f=document.getElementById('filter'); f.addEventListener('input',()=>filter(f.value));
const h=new URLSearchParams(location.hash.slice(1));
if(h.get('filter')){f.value=h.get('filter');filter(f.value);}
if(h.get('sort')){const s=h.get('sort');sortBy(Math.abs(parseInt(s)),s.startsWith('-'));}
})();
</script>"""

_SORT_KEYS = {  # column -> the number it sorts by
    "params": lambda c: (c.get("stats") or {}).get("params"),
    "size": lambda c: (c.get("stats") or {}).get("bytes"),
    "FLOPs": lambda c: (c.get("stats") or {}).get("flops"),
    "median ms (95% CI)": lambda c: (c.get("measured") or {}).get("median_ms"),
    "predicted ms": lambda c: c.get("predicted_ms"),
    "fidelity": lambda c: c.get("fidelity"),
}


def one_line(reason: str | None, width: int = 160) -> str:
    """A reason as one readable line: its first line, runtime source paths dropped, cut."""
    if not reason:
        return ""
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
    text = re.sub(r"Exception from \S+\.(cpp|hpp|h):\d+:?", "runtime exception", text)
    return text if len(text) <= width else text[:width - 1] + "…"


def reason_kind(c: Mapping[str, Any]) -> str:
    """A short class of why a candidate was folded away (for the fold's one-line summary)."""
    r = (c.get("reason") or "").lower()
    if c["status"] == "duplicate":
        return "duplicates"
    if c["status"] == "rejected":
        return "below the fidelity floor on its runtime" if r.startswith("on ") else \
            "below the fidelity floor"
    if "time limit" in r:
        return "cut by the time limit"
    return "failed to build or run" if c["status"] == "failed" else c["status"]


def recommendation_box(data: Mapping[str, Any]) -> str:
    rec = data.get("recommendation")
    rt = (data.get("runtimes") or {}).get("recommendation") or data["target"]
    if not rec:
        return (f'<div class="rec none"><div class="big">No recommendation</div>'
                f'<div>{html.escape(data.get("infeasible") or "no candidate was measured")}'
                f'</div></div>')
    lo, hi = rec["speedup_ci95"]
    expert = next((c.get("expert") for c in data["candidates"] if c["id"] == rec["id"]), None)
    return (f'<div class="rec" id="recommendation"><div class="muted">Recommendation on '
            f'{html.escape(rt)} (the --target runtime)</div>'
            f'<div class="big">{html.escape(rec["name"])}</div>'
            f'<div>{rec["median_ms"]:.3f} ms vs baseline {rec["baseline_ms"]:.3f} ms: '
            f'<b>{rec["speedup"]:.2f}x</b> [{lo:.2f}, {hi:.2f}] (interleaved, 95% CI), '
            f'fidelity {rec["fidelity"]:.4f}, {html.escape(rec["verdict"])}'
            + (f' · <span class="muted">{html.escape(expert)}</span>' if expert else "")
            + "</div></div>")


def runtime_table(data: Mapping[str, Any]) -> str:
    """Each runtime searched: its best candidate and its ratio vs the baseline (interleaved)."""
    rec = data.get("recommendation")
    rt = data.get("runtimes") or {}
    head = ["runtime", "best candidate", "median ms", "speedup vs baseline (95% CI)", "fidelity",
            "role"]
    rows = []
    if rec:
        rows.append([rt.get("recommendation") or data["target"], rec["name"],
                     f"{rec['median_ms']:.3f}", f"{rec['speedup']:.2f}x "
                     f"[{rec['speedup_ci95'][0]:.2f}, {rec['speedup_ci95'][1]:.2f}]",
                     f"{rec['fidelity']:.4f}", "recommendation (--target)"])
    for a in data.get("alternatives") or ():
        if a.get("speedup") is None:
            rows.append([a["runtime"], "-", "-", "-", "-", one_line(a.get("reason"))])
        else:
            rows.append([a["runtime"], a["name"], f"{a['median_ms']:.3f}",
                         f"{a['speedup']:.2f}x [{a['speedup_ci95'][0]:.2f}, "
                         f"{a['speedup_ci95'][1]:.2f}]", f"{a['fidelity']:.4f}",
                         "alternative (another runtime)"])
    out = _table(head, [[(x, None) for x in r] for r in rows], "runtimes")
    if rt.get("not_searched"):
        out += (f'<p class="muted">Installed but not searched: '
                f'{html.escape(", ".join(rt["not_searched"]))} (add <code>--runtimes</code> or '
                f'<code>--any-runtime</code> to compare).</p>')
    return out


def candidates_section(head: Sequence[str], pairs: Sequence[tuple[dict, list[str]]]) -> str:
    """Candidates that passed fidelity in a sortable, filterable table; the others folded."""
    kept = [(c, r) for c, r in pairs if c["status"] == "ok"]
    folded = [(c, r) for c, r in pairs if c["status"] != "ok"]
    keys = [_SORT_KEYS.get(h) for h in head]
    rows = [[(cell, None if k is None else k(c)) for cell, k in zip(r, keys)] for c, r in kept]
    out = [f'<input id="filter" type="search" placeholder="filter candidates (e.g. int8, '
           f'prune, ov-cpu)"> <span class="muted"><span id="shown">{len(kept)}</span> of '
           f'{len(kept)} shown; click a column to sort</span>',
           _table(head, rows, "candidates sortable", "cands",
                  row_q=[" ".join(filter(None, (c.get("family"), c.get("runtime"),
                                                c.get("expert")))) for c, _ in kept])]
    if folded:
        counts: dict[str, int] = {}
        for c, _ in folded:
            counts[reason_kind(c)] = counts.get(reason_kind(c), 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda x: -x[1]))
        frows = [[(c["name"], None), (c["status"], None), (one_line(c.get("reason")), None)]
                 for c, _ in folded]
        out.append(f'<details id="folded"><summary>{len(folded)} candidates not timed: '
                   f'{html.escape(summary)}</summary>'
                   + _table(["candidate", "status", "reason (first line)"], frows, "folded",
                            reason_col=2) + "</details>")
    return "\n".join(out)


def notes_section(notes: Sequence[str]) -> str:
    """The search's notes, folded, one line each (runtime error text is never at the top)."""
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(one_line(n, 240))}</li>" for n in notes)
    return (f'<details id="notes"><summary>Search notes ({len(notes)})</summary>'
            f"<ul>{items}</ul></details>")


def _table(head: Sequence[str], rows: Sequence[Sequence[tuple[str, Any]]], cls: str,
           tid: str | None = None, reason_col: int | None = None,
           row_q: Sequence[str] | None = None) -> str:
    """`row_q`: per row, more text the filter matches (family, runtime) than the cells show."""
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)

    def td(i: int, cell: str, v: Any) -> str:
        attr = "" if v is None else f' data-v="{float(v)!r}"'
        if i == reason_col:
            attr += f' class="reason" title="{html.escape(str(cell))}"'
        return f"<td{attr}>{html.escape(str(cell))}</td>"

    body = "".join(
        (f'<tr data-q="{html.escape(row_q[j])}">' if row_q else "<tr>")
        + "".join(td(i, c, v) for i, (c, v) in enumerate(r)) + "</tr>" for j, r in enumerate(rows))
    idattr = f' id="{tid}"' if tid else ""
    return f'<table class="{cls}"{idattr}><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'
