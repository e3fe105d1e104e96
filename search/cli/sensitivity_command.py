"""``paretoedge sensitivity CONFIG``: per layer group, the accuracy drop when only that group is
quantized, measured with onnxruntime (the bundle runtime) on the selection split; the result is
saved next to the study (``<workdir>/<study>/sensitivity.json``), logged to MLflow, and can seed
the study with mixed configurations (``quantization.seed_from_sensitivity``).
"""

from __future__ import annotations

import logging
from typing import Any

from rich.table import Table

log = logging.getLogger(__name__)


def sensitivity_table(report: Any, title: str) -> Table:
    """Per group and precision: accuracy with only that group quantized, and the drop."""
    table = Table(title=title, title_justify="left",
                  caption=f"fp32 accuracy {report.baseline_accuracy:.4f} on {report.samples} "
                          f"{report.split} samples; drop = fp32 accuracy - accuracy",
                  caption_justify="left")
    table.add_column("group", no_wrap=True)
    precisions = list(dict.fromkeys(e.precision for e in report.entries))
    for precision in precisions:
        table.add_column(f"{precision} acc", justify="right")
        table.add_column(f"{precision} drop pp", justify="right")
    for group in report.groups:
        row = [group]
        for precision in precisions:
            entry = next((e for e in report.entries
                          if e.group == group and e.precision == precision), None)
            row += ([f"{entry.accuracy:.4f}", f"{100 * entry.drop:+.2f}"] if entry
                    else ["-", "-"])
        table.add_row(*row)
    return table


