"""Per-checkpoint reports: ``report.json`` (schema ``genbound.report/1``) and ``report.md``."""

from genbound.report.summary import summarize_updates
from genbound.report.writer import write_report

__all__ = ["summarize_updates", "write_report"]
