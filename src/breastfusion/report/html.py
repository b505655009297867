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
{% set first = r.variants.values()|first %}{% if first.threshold_metrics is defined %}
<h2>Operating points, calibration and comparisons</h2>
<table><tr><th>variant</th><th>AUC (DeLong 95% CI)</th><th>sens</th><th>spec</th><th>F1</th><th>Brier</th><th>ECE</th>
<th>spec @ 95% sens</th><th>benign biopsies avoided / cancers missed per 100 (rule-out, sens ≥ 98%)</th>
<th>conformal coverage (abstain)</th><th>DeLong p vs {{ r.reference_variant }}</th></tr>
{% for name, v in r.variants.items() %}{% set t = v.threshold_metrics %}<tr><td>{{ name }}</td>
<td>{{ "%.3f"|format(v.auc) }} ({{ "%.3f"|format(v.auc_ci_delong[0]) }}–{{ "%.3f"|format(v.auc_ci_delong[1]) }})</td>
<td>{{ fmt(t.sensitivity) }}</td><td>{{ fmt(t.specificity) }}</td><td>{{ fmt(t.f1) }}</td>
<td>{{ fmt(v.brier) }}</td><td>{{ fmt(v.ece) }}</td><td>{{ fmt(v.specificity_at_sensitivity["0.95"]) }}</td>
<td>{{ fmt(v.biopsies_avoided.benign_biopsies_avoided, 1) }} / {{ fmt(v.biopsies_avoided.cancers_missed, 1) }}</td>
<td>{{ fmt(v.conformal.coverage) }} ({{ fmt(v.conformal.abstain_rate) }})</td>
<td>{{ "%.2g"|format(v.delong.p) if v.delong else "reference" }}</td></tr>
{% endfor %}</table>
<p class="note">Subject level, test folds pooled. Sensitivity, specificity and F1 at each fold's Youden threshold;
rule-out at each fold's threshold reaching ≥ 98% sensitivity; conformal prediction sets at α =
{{ first.conformal.alpha }}. All thresholds and conformal calibration come from each fold's
{{ first.conformal.calibration_source|join(", ") }} subjects, never from its test subjects{% if "training" in
first.conformal.calibration_source %} (in-sample training scores are optimistic: set training.val_fraction for
an inner validation split){% endif %}. DeLong: paired test of each variant against {{ r.reference_variant }} on the
same subjects.</p>{% endif %}
{% if r.explanations %}{% set e = r.explanations %}
<h2>Explanations · {{ e.variant }}</h2>
<p class="note">Each subject is explained by the fold network that did not see it.</p>
{% if e.contribution %}<h3>Modality contribution</h3>
<table><tr><th>modality</th><th>share of output change</th><th>mean φ (probability)</th>{% if e.contribution.gate_weights %}<th>gate weight</th>{% endif %}</tr>
{% for m, s in e.contribution.share_percent.items() %}<tr><td>{{ m }}</td><td><b>{{ "%.0f"|format(s) }}%</b></td><td>{{ "%+.3f"|format(e.contribution.mean_phi[m]) }}</td>{% if e.contribution.gate_weights %}<td>{{ "%.2f"|format(e.contribution.gate_weights[m]) }}</td>{% endif %}</tr>
{% endfor %}</table>
<p class="note">Exact Shapley values over modalities on P(malignant), every subset evaluated by marking the other
modalities missing; share = mean |φ| of a modality over the sum for all, over {{ e.contribution.n_lesions }} lesions.</p>{% endif %}
{% if e.clinical_importance %}<h3>Clinical variables</h3>
<table><tr><th>variable</th><th>AUC drop when shuffled</th><th>sd</th></tr>
{% for row in e.clinical_importance %}<tr><td>{{ row.variable }}</td><td>{{ "%+.3f"|format(row.importance) }}</td><td>{{ "%.3f"|format(row.importance_sd) }}</td></tr>
{% endfor %}</table>
<p class="note">Permutation importance: each variable shuffled among the held-out subjects of each fold; drop in
out-of-fold subject-level AUC ({{ "%.3f"|format(e.clinical_importance_auc) }} unshuffled).</p>{% endif %}
{% if e.faithfulness and e.faithfulness.table %}<h3>Heatmap faithfulness (lesion masks)</h3>
<table><tr><th>method</th><th>modality</th><th>images</th><th>energy in mask</th><th>pointing game</th></tr>
{% for row in e.faithfulness.table %}<tr><td>{{ row.method }}</td><td>{{ row.modality }}</td><td>{{ row.n }}</td><td>{{ "%.3f"|format(row.energy_in_mask) }}</td><td>{{ "%.2f"|format(row.pointing_game) }}</td></tr>
{% endfor %}</table>
<p class="note">Energy in mask: share of the heatmap inside the lesion (a uniform map scores the lesion's area
fraction). Pointing game: the heatmap's maximum within the lesion (tolerance 15 px at 224 px). "random": smoothed
noise heatmaps.</p>{% endif %}
{% if e.faithfulness and e.faithfulness.deletion_insertion %}{% set d = e.faithfulness.deletion_insertion %}
<p class="note">Deletion / insertion ({{ d.method }}, {{ d.n_images }} images, area under P(explained class)):
deletion {{ "%.3f"|format(d.deletion_auc) }} (random order {{ "%.3f"|format(d.random_deletion_auc) }}; lower is more
faithful), insertion {{ "%.3f"|format(d.insertion_auc) }} (random {{ "%.3f"|format(d.random_insertion_auc) }};
higher is more faithful).</p>{% endif %}
{% if figs.gallery %}<h3>Gallery: correct and misclassified cases</h3>
<img alt="heatmap gallery" src="data:image/png;base64,{{ figs.gallery }}" style="max-width:100%">{% endif %}
{% endif %}
<h2>Configuration</h2><pre>{{ config_yaml }}</pre>
<h2>Library versions</h2><p class="note">{% for k, v in r.versions.items() %}{{ k }} {{ v }}{{ ", " if not loop.last }}{% endfor %}</p>
</body></html>
"""


def write_report(results: dict[str, Any], *, roc_png: Path, config_yaml: str, path: Path,
                 figures: dict[str, Path] | None = None) -> Path:
    """Render ``report.html`` from the run's ``results.json`` content and its ROC figure.

    ``figures`` are further PNGs embedded by name (``gallery``: the explanations' heatmap gallery).
    """
    env = Environment(autoescape=select_autoescape(default=True))
    figs = {name: base64.b64encode(Path(p).read_bytes()).decode("ascii") for name, p in (figures or {}).items()}
    env.globals["fmt"] = lambda v, digits=3: "–" if v is None else f"{v:.{digits}f}"
    html = env.from_string(_TEMPLATE).render(
        r=results, roc_png=base64.b64encode(Path(roc_png).read_bytes()).decode("ascii"), config_yaml=config_yaml,
        figs=figs)
    Path(path).write_text(html, encoding="utf-8")
    return Path(path)
