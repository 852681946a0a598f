"""Per-checkpoint reports: ``report.json`` (schema ``genbound.report/1``) and ``report.md``."""

from genbound.report.writer import ensure_writable, write_report

__all__ = ["ensure_writable", "write_report"]
