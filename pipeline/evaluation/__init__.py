"""Evaluation: what the trained models are measured and reported with.

metrics (both papers' automatic metrics), stats (seed summaries, paired-bootstrap
claims), report (reports/results.md beside paper_results), sweeps (the papers' figures as
queued experiments), the diagnostics probe, selection and selection_probe (persona
selection), human_eval (the annotation kit) and dag (the pipeline's architecture).
"""
