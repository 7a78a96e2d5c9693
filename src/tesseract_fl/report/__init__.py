"""The reproduction report: paper Tables 2-3 beside ours, Figures 2-6, CSV (docs/design.md,
"Report").

``write_report(store, out_dir, grids)`` reads a results store for the runs that grid files plan
(``table2-*``, ``table3-*``, ``fig2-*`` ... ``fig6-*``) and writes ``report.md``, ``tables/*.csv``
and ``figures/*.png|svg``. The paper's printed numbers come from ``paper_values.toml`` and are
only shown beside ours.
"""

from tesseract_fl.report.paper import PaperValues, load_paper_values
from tesseract_fl.report.report import ReportResult, generate_report, write_report
from tesseract_fl.report.tables import build_table2, build_table3, deviates, weight_fractions

__all__ = [
    "PaperValues",
    "ReportResult",
    "build_table2",
    "build_table3",
    "deviates",
    "generate_report",
    "load_paper_values",
    "weight_fractions",
    "write_report",
]
