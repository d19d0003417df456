"""The HTML views: the standalone report page (``recall report --format html``) and the
dashboard's pages (``orchestrator.api.routes.dashboard``), from the templates in
``templates/``.

Both share the page frame (``base.html.j2``), the report's sections
(``report_body.html.j2``) and the SVG charts (``charts.html.j2`` over ``charts.py``), so a
number or a chart reads the same on either. Every page is self-contained: inline style and
SVG, no script, no font or file fetched, so it works offline and under a strict
Content-Security-Policy. Everything is autoescaped.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader

from orchestrator.reports import charts, formatting

_ENV = Environment(
    loader=PackageLoader("orchestrator.reports", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True,
)
_ENV.globals.update(fmt=formatting, charts=charts)


def render_page(template: str, **context: Any) -> str:
    """``templates/<template>`` rendered with ``context`` (plus ``fmt`` and ``charts``)."""
    return _ENV.get_template(template).render(**context)


def report_page(report: dict[str, Any]) -> str:
    """A journey report (``funnel.journey_report``) as one self-contained HTML page."""
    return render_page("report.html.j2", r=report)
