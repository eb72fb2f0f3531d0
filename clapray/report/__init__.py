"""Reports from the Parquet results store: ``python -m clapray.report RESULTS``.

``load`` reads stores and classifies trials, ``tables`` computes and writes summaries, ``knobs`` finds
the swept fields, ``importance`` runs fANOVA on the ``runs`` table, ``figures`` draws, ``build``
assembles a report and ``index`` writes its ``index.md``. Neither Ray nor torch is imported.
"""

from clapray.report.cli import make_report

__all__ = ["make_report"]
