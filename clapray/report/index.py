"""``index.md``: every table and figure of a report, one line on what it shows and which trials it used."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from clapray.report.build import Report
from clapray.report.load import Store


def write_index(report: Report, store: Store, command: str) -> Path:
    lines = ["# Report", "",
             f"Stores: {', '.join(f'`{r}`' for r in store.roots)}  ",
             f"Trials: {store.summary()}. Incomplete trials are left out of every table and figure "
             f"([list](incomplete.md)).  ",
             f"Made by `{command}` at {datetime.now(timezone.utc).isoformat(timespec='seconds')}.", ""]
    for kind, heading in (("table", "Tables"), ("figure", "Figures")):
        lines += [f"## {heading}", ""]
        for art in (a for a in report.artefacts if a.kind == kind):
            first, *others = art.files
            also = f" (also {', '.join(f'[{Path(f).suffix[1:]}]({f})' for f in others)})" if others else ""
            lines.append(f"- [{art.title}]({first}){also}: {art.what}. Trials: {art.trials}.")
        lines.append("")
    figures = [a for a in report.artefacts if a.kind == "figure"]
    if figures:
        lines += ["## Previews", ""]
        for art in figures:
            lines += [f"### {art.title}", "", f"![{art.title}]({art.files[0]})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    path = report.out / "index.md"
    path.write_text("\n".join(lines))
    return path
