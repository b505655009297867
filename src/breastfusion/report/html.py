"""A short, self-contained HTML report of a run (images embedded, opens offline)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

__all__ = ["write_report", "REPEAT_METRICS_SHOWN"]

#: The per-repeat metrics (``variants[v]["repeats"]["metrics"]``) the report's repeats table shows.
REPEAT_METRICS_SHOWN = ("auc", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece",
                        "benign_biopsies_avoided", "cancers_missed", "conformal_coverage")

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>breastfusion · {{ r.name }}</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:1080px;margin:2em auto;color:#222;line-height:1.4}
 table{border-collapse:collapse;margin:1em 0;font-size:.93em} th,td{border:1px solid #ccc;padding:.35em .7em;text-align:right}
 th{background:#f3f3f3} td:first-child,th:first-child,.l{text-align:left}
 .note{color:#555;font-size:.92em} pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
 td.pm{white-space:nowrap} table.compact{font-size:.84em} table.compact td,table.compact th{padding:.3em .45em} .key{background:#eef5fb;border-left:4px solid #3a7bbf;padding:.6em 1em} img{display:block;margin:1em 0}
</style></head><body>
<h1>breastfusion · {{ r.name }}</h1>
<p class="note">{{ r.created }} · breastfusion {{ r.versions.breastfusion }} · {{ r.cohort.n_subjects }} subjects
({{ r.cohort.n_malignant }} malignant), {{ r.cohort.n_images }} images · {{ r.cv.n_splits }}-fold cross-validation
grouped by subject (seed {{ r.cv.seed }}{% if nrep > 1 %}, {{ nrep }} repeats{% endif %}) · {{ encoders }}{% if r.runtime_s %} · {{ "%.0f"|format(r.runtime_s) }} s{% endif %}</p>
{% if r.ensemble %}<p class="key">An ensemble of {{ r.ensemble.members|length }} runs on the same folds: each lesion's
score is the mean of their logits on its held-out fold ({{ r.ensemble.combine }}); thresholds come from their averaged
calibration scores. Members: {% for m in r.ensemble.members %}<b>{{ m.name }}</b> ({{ m.run }}){{ ", " if not loop.last }}{% endfor %}.
The configuration below is the first member's (its evaluation settings score the ensemble).</p>{% endif %}
{% set ref = r.variants[r.reference_variant] if r.reference_variant in r.variants else none %}
{% if ref and ref.biopsies_avoided is defined %}<p class="key">{{ r.reference_variant }} model: AUC <b>{{ "%.3f"|format(ref.auc) }}</b>
(95% CI {{ "%.3f"|format(ref.auc_ci[0]) }}–{{ "%.3f"|format(ref.auc_ci[1]) }}). At a rule-out threshold set for
≥ {{ "%.0f"|format(100 * ref.biopsies_avoided.target_sensitivity) }}% sensitivity it would spare
<b>{{ fmt(ref.biopsies_avoided.benign_biopsies_avoided, 1) }}</b> benign biopsies per 100 patients and miss
<b>{{ fmt(ref.biopsies_avoided.cancers_missed, 1) }}</b> cancers per 100 (measured sensitivity
{{ fmt(100 * ref.biopsies_avoided.sensitivity, 1) }}%).</p>{% endif %}
{% set c = r.cohort %}
<h2>Cohort</h2>
<table><tr><th>subjects</th><th>lesions</th><th>malignant subjects</th><th>images</th><th>cross-validation groups</th></tr>
<tr><td>{{ c.n_subjects }}</td><td>{{ c.n_lesions }}</td><td>{{ c.n_malignant }} ({{ "%.0f"|format(100 * c.n_malignant / c.n_subjects) }}%)</td>
<td>{{ c.n_images }}</td><td>{{ c.n_cv_groups if c.n_cv_groups is defined else c.n_subjects }}</td></tr></table>
{% if c.n_training_only %}<p>{{ c.n_training_only }} of the {{ c.n_lesions }} lesions come from pooled cohorts
(<code>cv.training_only_column</code>): they join every training fold and are never tested; every figure is on the
other {{ c.n_lesions - c.n_training_only }}.</p>{% endif %}
{% if c.subjects_per_modality %}<table><tr><th>modality</th><th>subjects with it</th><th>images</th></tr>
{% for m, n in c.subjects_per_modality.items() %}<tr><td>{{ m }}</td><td>{{ n }} ({{ "%.0f"|format(100 * n / c.n_subjects) }}%)</td>
<td>{{ c.images_per_modality.get(m, "–") }}</td></tr>{% endfor %}</table>{% endif %}
{% if c.data_check %}{% set d = c.data_check %}<p><b>Data check</b> ({{ d.source }}): {{ d.n_unreadable }} unreadable
images{% if d.unreadable_examples %} (e.g. {{ d.unreadable_examples|join("; ") }}){% endif %};
{{ d.n_duplicate_pairs }} near-duplicate image pairs (pHash distance ≤ {{ d.max_distance }}), {{ d.n_cross_subject_pairs }}
across subjects and {{ d.n_cross_label_pairs }} across labels; {{ d.n_leaking_groups }} duplicate groups span several
subjects{% if d.subjects_missing %}; subjects missing a modality: {% for m, n in d.subjects_missing.items() %}{{ m }} {{ n }}{{ ", " if not loop.last }}{% endfor %}{% endif %}.</p>
{% elif c.data_check is defined %}<p class="note">No data-check report in the cohort folder
(<code>breastfusion data check DIR --json DIR/check.json</code> adds one).</p>{% endif %}
<h2>Variants</h2>
<table><tr><th>variant</th><th class="l">modalities</th><th>AUC</th><th>95% CI</th>{% if nrep > 1 %}<th>AUC mean ± sd over {{ nrep }} repeats</th>{% endif %}<th>AUC per fold</th>
{% if r.modality_oracle_auc %}<th>ceiling</th>{% endif %}</tr>
{% for name, v in r.variants.items() %}<tr><td>{{ name }}</td><td class="l">{{ v.modalities|join(" + ") }}</td>
<td><b>{{ "%.3f"|format(v.auc) }}</b></td><td>{{ "%.3f"|format(v.auc_ci[0]) }} – {{ "%.3f"|format(v.auc_ci[1]) }}</td>
{% if nrep > 1 %}<td class="pm">{{ pm(v.repeats.metrics.auc) if v.repeats else "–" }}</td>{% endif %}
<td>{{ v.fold_auc|map("round", 3)|join(", ") }}</td>
{% if r.modality_oracle_auc %}<td>{{ "%.3f"|format(v.ceiling_auc) if v.ceiling_auc is not none else "" }}</td>{% endif %}</tr>
{% endfor %}
{% if r.oracle_auc is not none %}<tr><td><i>oracle</i></td><td class="l">all latents</td><td><b>{{ "%.3f"|format(r.oracle_auc) }}</b></td>
<td>{{ "%.3f"|format(r.oracle_auc_ci[0]) }} – {{ "%.3f"|format(r.oracle_auc_ci[1]) }}</td>{% if nrep > 1 %}<td></td>{% endif %}<td></td>
{% if r.modality_oracle_auc %}<td></td>{% endif %}</tr>{% endif %}
</table>
<p class="note">AUC at the subject level over out-of-fold predictions{% if r.evaluation %} (lesions aggregated per subject by
<b>{{ r.evaluation.aggregation }}</b>{% if r.evaluation.recalibration != "none" %}, then recalibrated per fold
(<b>{{ r.evaluation.recalibration }}</b>, fitted on the fold's calibration subjects){% endif %}){% endif %}; 95% CI from
{{ r.cv.bootstrap }} stratified bootstrap resamples of subjects{% if nrep > 1 %}, on repeat 0; mean ± sd across the
{{ nrep }} repeats of the cross-validation beside it{% endif %}.{% if r.oracle_auc is not none %} The oracle is the
Bayes-optimal posterior computed from the generator's latent lesion properties: no model can beat it in expectation.
"Ceiling" is the oracle restricted to the latents that the variant's modalities observe.{% endif %}</p>
<img alt="ROC curves" src="data:image/png;base64,{{ roc_png }}" width="550">
{% if r.roc_band %}<p class="note">Shaded: pointwise {{ "%.0f"|format(100 * r.roc_band.level) }}% stratified-bootstrap
band ({{ r.roc_band.n_boot }} resamples) of the {{ r.roc_band.variant }} curve.</p>{% endif %}
{% set first = r.variants.values()|first %}{% if first.threshold_metrics is defined %}
<h2>Operating points and comparisons</h2>
<table><tr><th>variant</th><th>AUC (DeLong 95% CI)</th><th>sens</th><th>spec</th><th>bal. acc.</th><th>F1</th>
<th>spec @ 95% sens</th><th>benign biopsies avoided / cancers missed per 100 (rule-out, sens ≥ {{ "%.0f"|format(100 * first.biopsies_avoided.target_sensitivity) }}%)</th>
<th>conformal coverage (abstain)</th><th>DeLong p vs {{ r.reference_variant }}</th></tr>
{% for name, v in r.variants.items() %}{% set t = v.threshold_metrics %}<tr><td>{{ name }}</td>
<td>{{ "%.3f"|format(v.auc) }} ({{ "%.3f"|format(v.auc_ci_delong[0]) }}–{{ "%.3f"|format(v.auc_ci_delong[1]) }})</td>
<td>{{ fmt(t.sensitivity) }}</td><td>{{ fmt(t.specificity) }}</td><td>{{ fmt(t.balanced_accuracy) }}</td><td>{{ fmt(t.f1) }}</td>
<td>{{ fmt(v.specificity_at_sensitivity["0.95"]) }}</td>
<td>{{ fmt(v.biopsies_avoided.benign_biopsies_avoided, 1) }} / {{ fmt(v.biopsies_avoided.cancers_missed, 1) }}</td>
<td>{{ fmt(v.conformal.coverage) }} ({{ fmt(v.conformal.abstain_rate) }})</td>
<td>{{ "%.2g"|format(v.delong.p) if v.delong else "reference" }}</td></tr>
{% endfor %}</table>
<p class="note">Subject level, test folds pooled. Sensitivity, specificity, balanced accuracy and F1 at each fold's
Youden threshold; rule-out at each fold's threshold reaching the target sensitivity; conformal prediction sets at α =
{{ first.conformal.alpha }} (a set holding both labels is an abstention: the case goes to the clinician). All
thresholds and conformal calibration come from each fold's {{ first.conformal.calibration_source|join(", ") }}
subjects, never from its test subjects{% if "training" in first.conformal.calibration_source %} (in-sample training
scores are optimistic: set training.val_fraction for an inner validation split){% endif %}. DeLong: paired test of
each variant against {{ r.reference_variant }} on the same subjects.</p>
{% if figs.confusion_matrices %}<img alt="confusion matrices" src="data:image/png;base64,{{ figs.confusion_matrices }}" style="max-width:100%">{% endif %}
{% endif %}
{% if first.recalibration is defined %}
<h2>Calibration</h2>
<p>Does a predicted risk of 30% mean that about 30 in 100 such patients have cancer? Points on the diagonal say yes.</p>
<table><tr><th>variant</th><th>Brier</th><th>ECE</th>{% if first.recalibration.method != "none" %}<th>Brier before recalibration</th><th>ECE before recalibration</th>{% endif %}</tr>
{% for name, v in r.variants.items() %}<tr><td>{{ name }}</td><td>{{ fmt(v.brier) }}</td><td>{{ fmt(v.ece) }}</td>
{% if first.recalibration.method != "none" %}<td>{{ fmt(v.recalibration.brier_before) }}</td><td>{{ fmt(v.recalibration.ece_before) }}</td>{% endif %}</tr>
{% endfor %}</table>
<p class="note">Brier score: mean squared error of the predicted risk (lower is better; {{ "%.3f"|format(first_prev * (1 - first_prev)) }} for
always predicting the prevalence). ECE: mean gap between predicted and observed risk over 10 equal-width bins.
{% if first.recalibration.method != "none" %}Recalibration: {{ first.recalibration.method }}, fitted per fold on its
calibration subjects and applied to its test subjects.{% else %}No recalibration (evaluation.recalibration: none).{% endif %}</p>
{% if figs.calibration %}<img alt="calibration curves" src="data:image/png;base64,{{ figs.calibration }}" style="max-width:100%">{% endif %}
{% endif %}
{% if first.decision_curve is defined %}
<h2>Decision curves</h2>
{% if figs.decision_curves %}<img alt="decision curves" src="data:image/png;base64,{{ figs.decision_curves }}" width="620">{% endif %}
<table><tr><th>variant</th>{% for row in first.net_benefit %}<th>net benefit @ {{ "%.0f"|format(100 * row.threshold) }}%</th>{% endfor %}</tr>
{% for name, v in r.variants.items() %}<tr><td>{{ name }}</td>{% for row in v.net_benefit %}<td>{{ fmt(row.model) }}</td>{% endfor %}</tr>{% endfor %}
<tr><td><i>biopsy all</i></td>{% for row in first.net_benefit %}<td>{{ fmt(row.treat_all) }}</td>{% endfor %}</tr></table>
<p class="note">Net benefit at a threshold probability p<sub>t</sub>: true positives per patient minus false positives
per patient weighted by p<sub>t</sub>/(1 − p<sub>t</sub>), the harm a clinician accepts per unnecessary biopsy
(Vickers &amp; Elkin 2006). "Biopsy none" is 0. A model helps at thresholds where it is above both references.</p>
{% endif %}
{% if nrep > 1 %}
<h2>Repeated cross-validation</h2>
<table class="compact"><tr><th>variant</th>{% for m in repeat_metrics %}<th>{{ labels.get(m, m.replace("_", " ")) }}{{ " per 100" if m in per_100 }}</th>{% endfor %}</tr>
{% for name, v in r.variants.items() %}<tr><td>{{ name }}</td>{% for m in repeat_metrics %}<td class="pm">{{ pm(v.repeats.metrics[m], 1 if m in per_100 else 3) if v.repeats else "–" }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="note">Mean ± sd across {{ nrep }} repeats (each reshuffles the folds with seed cv.seed + repeat); thresholds per
fold as above. Confidence intervals and DeLong tests elsewhere in this report are on repeat 0.</p>
{% endif %}
{% if r.ablation %}
<h2>Ablation · reference {{ r.reference_variant }}</h2>
<table class="compact"><tr><th>variant</th><th class="l">modalities</th><th>stage 2</th><th>AUC [95% CI]</th><th>accuracy</th><th>F1</th><th>sensitivity</th><th>specificity</th><th>DeLong p</th></tr>
{% for a in r.ablation %}<tr><td>{{ a.variant }}{% if a.change and a.change != a.variant %} <span class="note">({{ a.change }})</span>{% endif %}</td><td class="l">{{ a.modalities }}</td><td>{{ a.stage2 }}</td>
<td style="white-space:nowrap">{{ fmt(a.auc) }} [{{ fmt(a.auc_ci_low) }}, {{ fmt(a.auc_ci_high) }}]</td><td>{{ fmt(a.accuracy) }}</td><td>{{ fmt(a.f1) }}</td><td>{{ fmt(a.sensitivity) }}</td><td>{{ fmt(a.specificity) }}</td>
<td>{{ "reference" if a.delong_p is none else ("%.2g"|format(a.delong_p) if a.delong_p < 0.001 else "%.3f"|format(a.delong_p)) }}</td></tr>
{% endfor %}</table>
<p class="note">One factor changed at a time from the reference. Subject level, out-of-fold; accuracy to specificity at
each fold's Youden threshold from its training folds; p: paired DeLong test against the reference on the same
subjects, not corrected for multiple comparisons. Networks shared between variants were trained once.</p>
{% endif %}
{% set s2 = r.variants.values()|selectattr("stage2_feature_importance")|list %}{% if s2 %}
<h2>Stage-2 feature groups</h2>
<table><tr><th>variant</th><th>feature group</th><th>test AUC drop when permuted</th><th>sd over folds</th></tr>
{% for name, v in r.variants.items() %}{% for g in v.stage2_feature_importance or [] %}<tr><td>{{ name }} ({{ v.stage2 }})</td><td>{{ g.group }}</td><td>{{ "%+.3f"|format(g.auc_drop) }}</td><td>{{ fmt(g.auc_drop_sd_over_folds) }}</td></tr>
{% endfor %}{% endfor %}</table>
<p class="note">All columns of a feature group (the fused representation, or one branch's features) permuted together
among each fold's test lesions; mean drop of that fold's AUC over 5 permutations, averaged over folds.</p>
{% endif %}
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
{% for row in e.faithfulness.table %}<tr><td>{{ row.method }}</td><td>{{ row.modality }}</td><td>{{ row.n }}</td><td>{{ "%.3f"|format(row.energy_in_mask) if row.energy_in_mask is not none else "n/a" }}</td><td>{{ "%.2f"|format(row.pointing_game) if row.pointing_game is not none else "n/a" }}</td></tr>
{% endfor %}</table>
<p class="note">Energy in mask: share of the heatmap inside the lesion (a uniform map scores the lesion's area
fraction). Pointing game: the heatmap's maximum within the lesion (tolerance 15 px at 224 px). "random": smoothed
noise heatmaps; "centre": a Gaussian at the image centre (lesions are often centred, so a faithful map should beat
it too).</p>{% endif %}
{% if e.faithfulness and e.faithfulness.deletion_insertion %}{% set d = e.faithfulness.deletion_insertion %}
<p class="note">Deletion / insertion ({{ d.method }}, {{ d.n_images }} images, area under P(explained class)):
deletion {{ "%.3f"|format(d.deletion_auc) }} (random order {{ "%.3f"|format(d.random_deletion_auc) }}; lower is more
faithful), insertion {{ "%.3f"|format(d.insertion_auc) }} (random {{ "%.3f"|format(d.random_insertion_auc) }};
higher is more faithful).</p>{% endif %}
{% if figs.gallery %}<h3>Gallery: correct and misclassified cases</h3>
<img alt="heatmap gallery" src="data:image/png;base64,{{ figs.gallery }}" style="max-width:100%">{% endif %}
{% endif %}
<h2>Configuration</h2><details><summary>the resolved configuration of this run (YAML; run it again with
<code>breastfusion run config.yaml</code>)</summary><pre>{{ config_yaml }}</pre></details>
<h2>Library versions</h2><p class="note">{% for k, v in r.versions.items() %}{{ k }} {{ v }}{{ ", " if not loop.last }}{% endfor %}</p>
</body></html>
"""


def _plus_minus(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    sd = entry.get("sd")
    return f"{entry['mean']:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{entry['mean']:.{digits}f}"


def _n_repeats(results: dict[str, Any]) -> int:
    return max([(v.get("repeats") or {}).get("n_repeats", 1) for v in results["variants"].values()] or [1])


def _encoder_start(config_yaml: str) -> str:
    """Where the image encoders of a run started: "trained from scratch", or each pretrained branch's weights."""
    import yaml

    try:
        model = (yaml.safe_load(config_yaml) or {}).get("model") or {}
    except yaml.YAMLError:
        return "encoders: see the configuration"
    pretrained = {m: b.get("weights") for m, b in model.items() if isinstance(b, dict) and b.get("weights")}
    if not pretrained:
        return "encoders trained from scratch"
    return "; ".join(f"{m} encoder from {w}" for m, w in pretrained.items())


def write_report(results: dict[str, Any], *, roc_png: Path, config_yaml: str, path: Path,
                 figures: dict[str, Path] | None = None) -> Path:
    """Render ``report.html`` from the run's ``results.json`` content and its figures (PNG, embedded).

    Args:
        results: the content of ``results.json``.
        roc_png: the ROC figure.
        config_yaml: the resolved configuration, shown verbatim.
        path: the HTML file to write.
        figures: further PNGs embedded by name (``calibration``, ``decision_curves``,
            ``confusion_matrices``; ``gallery``: the explanations' heatmap gallery). Figures of
            :data:`~breastfusion.report.figures.FIGURES` found beside ``path`` are embedded too, so
            re-rendering a run's report (as ``explain`` does) keeps them.
    """
    from breastfusion.report.figures import FIGURES

    found = {name: Path(path).parent / file for name, file in FIGURES.items()
             if name != "roc" and (Path(path).parent / file).is_file()}
    env = Environment(autoescape=select_autoescape(default=True))
    figs = {name: base64.b64encode(Path(p).read_bytes()).decode("ascii")
            for name, p in {**found, **(figures or {})}.items()}
    env.globals["fmt"] = lambda v, digits=3: "–" if v is None else f"{v:.{digits}f}"
    env.globals["pm"] = _plus_minus
    cohort = results.get("cohort", {})
    encoders = _encoder_start(config_yaml) if not results.get("ensemble") else "encoders as in each member run"
    prevalence = cohort.get("n_malignant", 0) / max(cohort.get("n_subjects", 1), 1)
    html = env.from_string(_TEMPLATE).render(
        r=results, roc_png=base64.b64encode(Path(roc_png).read_bytes()).decode("ascii"), config_yaml=config_yaml,
        figs=figs, nrep=_n_repeats(results), first_prev=prevalence, encoders=encoders, repeat_metrics=REPEAT_METRICS_SHOWN,
        per_100=("benign_biopsies_avoided", "cancers_missed"),
        labels={"auc": "AUC", "brier": "Brier", "ece": "ECE", "f1": "F1"})
    Path(path).write_text(html, encoding="utf-8")
    return Path(path)
