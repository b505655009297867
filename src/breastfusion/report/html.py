"""A short, self-contained HTML report of a run (images embedded, opens offline)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

__all__ = ["write_report"]

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>breastfusion · {{ r.name }}</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222;line-height:1.4}
 table{border-collapse:collapse;margin:1em 0} th,td{border:1px solid #ccc;padding:.35em .7em;text-align:right}
 th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
 .note{color:#555;font-size:.92em} pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
</style></head><body>
<h1>breastfusion · {{ r.name }}</h1>
<p class="note">{{ r.created }} · breastfusion {{ r.versions.breastfusion }} · {{ r.cohort.n_subjects }} subjects
({{ r.cohort.n_malignant }} malignant), {{ r.cohort.n_images }} images · {{ r.cv.n_splits }}-fold cross-validation
grouped by subject (seed {{ r.cv.seed }}) · encoders trained from scratch{% if r.runtime_s %} · {{ "%.0f"|format(r.runtime_s) }} s{% endif %}</p>
<h2>Variants</h2>
<table><tr><th>variant</th><th>modalities</th><th>AUC</th><th>95% CI</th><th>AUC per fold</th>
{% if r.modality_oracle_auc %}<th>ceiling</th>{% endif %}</tr>
{% for name, v in r.variants.items() %}<tr><td>{{ name }}</td><td>{{ v.modalities|join(" + ") }}</td>
<td><b>{{ "%.3f"|format(v.auc) }}</b></td><td>{{ "%.3f"|format(v.auc_ci[0]) }} – {{ "%.3f"|format(v.auc_ci[1]) }}</td>
<td>{{ v.fold_auc|map("round", 3)|join(", ") }}</td>
{% if r.modality_oracle_auc %}<td>{{ "%.3f"|format(v.ceiling_auc) if v.ceiling_auc is not none else "" }}</td>{% endif %}</tr>
{% endfor %}
{% if r.oracle_auc is not none %}<tr><td><i>oracle</i></td><td>all latents</td><td><b>{{ "%.3f"|format(r.oracle_auc) }}</b></td>
<td>{{ "%.3f"|format(r.oracle_auc_ci[0]) }} – {{ "%.3f"|format(r.oracle_auc_ci[1]) }}</td><td></td>
{% if r.modality_oracle_auc %}<td></td>{% endif %}</tr>{% endif %}
</table>
<p class="note">AUC at the subject level over out-of-fold predictions; 95% CI from {{ r.cv.bootstrap }} stratified
bootstrap resamples of subjects.{% if r.oracle_auc is not none %} The oracle is the Bayes-optimal posterior computed
from the generator's latent lesion properties: no model can beat it in expectation. "Ceiling" is the oracle restricted
to the latents that the variant's modalities observe.{% endif %}</p>
<img alt="ROC curves" src="data:image/png;base64,{{ roc_png }}" width="550">
<h2>Configuration</h2><pre>{{ config_yaml }}</pre>
<h2>Library versions</h2><p class="note">{% for k, v in r.versions.items() %}{{ k }} {{ v }}{{ ", " if not loop.last }}{% endfor %}</p>
</body></html>
"""


def write_report(results: dict[str, Any], *, roc_png: Path, config_yaml: str, path: Path) -> Path:
    """Render ``report.html`` from the run's ``results.json`` content and its ROC figure."""
    env = Environment(autoescape=select_autoescape(default=True))
    html = env.from_string(_TEMPLATE).render(
        r=results, roc_png=base64.b64encode(Path(roc_png).read_bytes()).decode("ascii"), config_yaml=config_yaml)
    Path(path).write_text(html, encoding="utf-8")
    return Path(path)
