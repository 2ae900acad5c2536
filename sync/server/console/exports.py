"""The contact list as the call centre takes it away: CSV and XLSX with the same cells as
`checkpoint server trace` (sync/server/trace.py: control characters escaped, a leading = + - @
neutralised with a quote), the XLSX written with every cell a string (xlsxwriter with formula, URL
and number conversion off), so no spreadsheet program evaluates anything in it."""
from __future__ import annotations

import datetime as dt
import io

import xlsxwriter

from sync.server.trace import TraceReport, csv_rows, csv_text

CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def to_csv(report: TraceReport, tz: dt.tzinfo) -> bytes:
    """UTF-8 with a byte order mark (spreadsheet programs then read Vietnamese names right)."""
    return ("\ufeff" + csv_text(report, tz)).encode("utf-8")


def to_xlsx(report: TraceReport, tz: dt.tzinfo, *, title: str) -> bytes:
    """One sheet: the header row, then the rows of ``csv_rows``, every cell written as a string."""
    buf = io.BytesIO()
    book = xlsxwriter.Workbook(buf, {"in_memory": True, "strings_to_formulas": False, "strings_to_urls": False,
                                     "strings_to_numbers": False})
    sheet = book.add_worksheet(title[:31] or "contacts")
    bold = book.add_format({"bold": True})
    for r, row in enumerate(csv_rows(report, tz)):
        for c, value in enumerate(row):
            sheet.write_string(r, c, value, bold if r == 0 else None)
    book.close()
    return buf.getvalue()
