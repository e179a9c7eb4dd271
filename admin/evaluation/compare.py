"""Side-by-side comparison of two deployments on the same questions (Markdown or HTML)."""

from __future__ import annotations

import html
from pathlib import Path

from admin.evaluation.run import EvalItem, EvalReport, fmt_rate


def _pairs(report: EvalReport) -> list[tuple[str, dict[str, EvalItem]]]:
    by_q: dict[str, dict[str, EvalItem]] = {}
    order: list[str] = []
    for item in report.items:
        if item.question.id not in by_q:
            order.append(item.question.id)
        by_q.setdefault(item.question.id, {})[item.deployment] = item
    return [(q, by_q[q]) for q in order]


def _verdict(item: EvalItem | None) -> str:
    if item is None:
        return "–"
    if item.verdict is None:
        return f"not scored ({item.outcome})"
    return "✔ compliant" if item.verdict.compliant else "✘ " + item.verdict.comment


def to_markdown(report: EvalReport) -> str:
    deps = report.deployments
    lines = [f"# Side by side: {' vs '.join(deps)}", "",
             "| | " + " | ".join(deps) + " |", "|---" * (len(deps) + 1) + "|",
             "| adherence | " + " | ".join(fmt_rate(report.adherence(d)["overall"])
                                          for d in deps) + " |", ""]
    for qid, items in _pairs(report):
        first = next(iter(items.values()))
        lines += [f"## {qid}: {first.question.question}", ""]
        for d in deps:
            item = items.get(d)
            reply = item.reply if item else ""
            lines += [f"**{d}** — {_verdict(item)}", "", "> " + reply.replace("\n", "\n> "), ""]
    return "\n".join(lines)


def to_html(report: EvalReport) -> str:
    deps = report.deployments
    esc = html.escape
    head = "".join(f"<th>{esc(d)}<br><small>{esc(fmt_rate(report.adherence(d)['overall']))}"
                   "</small></th>" for d in deps)
    rows = []
    for qid, items in _pairs(report):
        first = next(iter(items.values()))
        cells = "".join(
            f"<td><p>{esc(items[d].reply) if d in items else ''}</p>"
            f"<p class=v>{esc(_verdict(items.get(d)))}</p></td>" for d in deps)
        rows.append(f"<tr><th>{esc(qid)}<br><small>{esc(first.question.question)}</small>"
                    f"</th>{cells}</tr>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.5em;vertical-align:top;max-width:40em}"
             ".v{color:#555;font-size:.9em}")
    return (f"<!doctype html><meta charset=utf-8><title>Side by side</title><style>{style}"
            f"</style><table><tr><th>question</th>{head}</tr>{''.join(rows)}</table>")


def write_report(report: EvalReport, out: Path) -> None:
    """Written atomically: a reader never sees half a report."""
    text = to_html(report) if out.suffix.lower() in (".html", ".htm") else to_markdown(report)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
