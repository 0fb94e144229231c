"""The papers' published numbers (methods §2, §3), kept as data, exactly as printed.

THESE ARE THE PAPERS' NUMBERS, measured on the full Persona-Chat, not this project's.
Values are the printed strings, in the unit of each paper's table: PEDNet prints
fractions, GCL prints percent (entropies in bits). ``paper_fraction`` converts to the
unit of reports/metrics/*.json.
"""

from __future__ import annotations

PEDNET_SOURCE = (
    "PEDNet (COLING 2020) Table 2: full Persona-Chat, ParlAI self_original, single-turn test examples (7,512)"
)
GCL_SOURCE = (
    "GCL (Findings of EMNLP 2020) Table 2(a): full Persona-Chat, multi-turn contexts of both "
    "speakers (140,248 context-response pairs in all splits); embedding metrics with GloVe"
)

# PEDNet Table 2; PEDNet at K = 15 (its best).
PEDNET_TABLE2: dict[str, dict[str, str]] = {
    "seq2seq": {"distinct_1": "0.018", "distinct_2": "0.064", "persona_recall": "0.048",
                "persona_precision": "0.030", "persona_f1": "0.037", "persona_coverage": "0.016"},
    "gpmn": {"distinct_1": "0.028", "distinct_2": "0.160", "persona_recall": "0.082",
             "persona_precision": "0.048", "persona_f1": "0.060", "persona_coverage": "0.034"},
    "postks": {"distinct_1": "0.031", "distinct_2": "0.174", "persona_recall": "0.111",
               "persona_precision": "0.068", "persona_f1": "0.084", "persona_coverage": "0.037"},
    "pednet": {"distinct_1": "0.031", "distinct_2": "0.173", "persona_recall": "0.143",
               "persona_precision": "0.088", "persona_f1": "0.109", "persona_coverage": "0.045"},
}  # fmt: skip
PEDNET_UNIT = "fraction"

# GCL Table 2(a), Persona-Chat, in percent (entropy_1/2 in bits): each generator trained by MLE
# and by GCL. Keys: our runs. All four read the multi-turn context (the `history` setting):
# their Seq2Seq is our seq2seq_history, and likewise HRED, Transformer and HRAN.
GCL_TABLE2A: dict[str, dict[str, str]] = {
    "seq2seq_history": {"bleu_1": "12.04", "bleu_2": "3.995", "bleu_3": "0.882", "bleu_4": "0.231",
                "distinct_1": "0.431", "distinct_2": "2.045", "distinct_3": "4.303",
                "emb_average": "36.33", "emb_extrema": "28.66", "emb_greedy": "63.64", "coherence": "41.66",
                "entropy_1": "6.891", "entropy_2": "10.81"},
    "seq2seq_history_gcl": {"bleu_1": "13.66", "bleu_2": "4.916", "bleu_3": "1.597", "bleu_4": "0.612",
                    "distinct_1": "0.849", "distinct_2": "5.093", "distinct_3": "12.00",
                    "emb_average": "39.76", "emb_extrema": "31.74", "emb_greedy": "64.76", "coherence": "49.39",
                    "entropy_1": "7.016", "entropy_2": "10.90"},
    "hred_history": {"bleu_1": "12.41", "bleu_2": "3.836", "bleu_3": "0.846", "bleu_4": "0.236",
                     "distinct_1": "0.474", "distinct_2": "2.546", "distinct_3": "6.127",
                     "emb_average": "36.52", "emb_extrema": "28.37", "emb_greedy": "64.12", "coherence": "39.08",
                     "entropy_1": "6.792", "entropy_2": "10.66"},
    "hred_history_gcl": {"bleu_1": "13.18", "bleu_2": "4.322", "bleu_3": "1.036", "bleu_4": "0.327",
                         "distinct_1": "0.713", "distinct_2": "4.468", "distinct_3": "11.22",
                         "emb_average": "38.54", "emb_extrema": "29.65", "emb_greedy": "64.26", "coherence": "44.07",
                         "entropy_1": "6.931", "entropy_2": "10.84"},
    "transformer_history": {"bleu_1": "11.46", "bleu_2": "3.208", "bleu_3": "0.539", "bleu_4": "0.148",
                    "distinct_1": "0.481", "distinct_2": "2.544", "distinct_3": "6.146",
                    "emb_average": "35.72", "emb_extrema": "27.38", "emb_greedy": "63.61", "coherence": "38.02",
                    "entropy_1": "6.804", "entropy_2": "10.55"},
    "transformer_history_gcl": {"bleu_1": "12.66", "bleu_2": "3.892", "bleu_3": "0.841", "bleu_4": "0.258",
                        "distinct_1": "0.786", "distinct_2": "4.562", "distinct_3": "10.95",
                        "emb_average": "37.42", "emb_extrema": "28.95", "emb_greedy": "64.02", "coherence": "41.96",
                        "entropy_1": "6.918", "entropy_2": "10.80"},
    "hran_history": {"bleu_1": "12.19", "bleu_2": "3.829", "bleu_3": "0.775", "bleu_4": "0.217",
                     "distinct_1": "0.507", "distinct_2": "2.883", "distinct_3": "7.104",
                     "emb_average": "36.53", "emb_extrema": "28.08", "emb_greedy": "63.58", "coherence": "40.22",
                     "entropy_1": "6.964", "entropy_2": "10.83"},
    "hran_history_gcl": {"bleu_1": "13.43", "bleu_2": "4.503", "bleu_3": "1.063", "bleu_4": "0.351",
                         "distinct_1": "0.771", "distinct_2": "4.974", "distinct_3": "12.38",
                         "emb_average": "39.04", "emb_extrema": "30.08", "emb_greedy": "64.48", "coherence": "46.63",
                         "entropy_1": "6.942", "entropy_2": "10.87"},
}  # fmt: skip
GCL_UNIT = "percent"
BITS = ("entropy_1", "entropy_2")  # not percentages, in any GCL table

GCL_TABLE3_SOURCE = (
    "GCL (Findings of EMNLP 2020) Table 3: Seq2Seq trained by other learning approaches, full "
    "Persona-Chat (the data of its Table 2(a)); embedding metrics with GloVe"
)
# GCL Table 3, Persona-Chat, Seq2Seq (multi-turn context), in percent (entropy_1/2 in bits): the
# learning approaches GCL is compared with, and GCL. Keys: our run of each row. Adversarial is
# decoded from its training's last step (a fixed budget, no selection); the paper's MMI is our
# bidirectional reranking (MMI-bidi). Our MMI-antiLM (seq2seq_history_mmi_antilm) has no paper
# row: the paper prints one MMI row. GCL's row is its Table 2(a) Seq2Seq + GCL.
GCL_TABLE3: dict[str, dict[str, str]] = {
    "seq2seq_history_adversarial_last": {
        "bleu_1": "12.19", "bleu_2": "4.006", "bleu_3": "0.895", "bleu_4": "0.264",
        "distinct_1": "0.627", "distinct_2": "3.357", "distinct_3": "7.374",
        "emb_average": "35.93", "emb_extrema": "29.00", "emb_greedy": "63.65", "coherence": "42.38",
        "entropy_1": "6.980", "entropy_2": "10.88"},
    "seq2seq_history_mmi": {
        "bleu_1": "14.03", "bleu_2": "4.646", "bleu_3": "1.334", "bleu_4": "0.502",
        "distinct_1": "0.473", "distinct_2": "2.443", "distinct_3": "5.515",
        "emb_average": "39.34", "emb_extrema": "30.92", "emb_greedy": "64.84", "coherence": "45.16",
        "entropy_1": "6.874", "entropy_2": "10.65"},
    "seq2seq_history_deeprl": {
        "bleu_1": "12.66", "bleu_2": "4.015", "bleu_3": "1.014", "bleu_4": "0.331",
        "distinct_1": "0.684", "distinct_2": "3.838", "distinct_3": "8.581",
        "emb_average": "37.23", "emb_extrema": "29.68", "emb_greedy": "64.30", "coherence": "44.13",
        "entropy_1": "6.885", "entropy_2": "10.85"},
    "seq2seq_history_cvae": {
        "bleu_1": "11.57", "bleu_2": "2.810", "bleu_3": "0.636", "bleu_4": "0.171",
        "distinct_1": "0.288", "distinct_2": "2.326", "distinct_3": "7.506",
        "emb_average": "39.29", "emb_extrema": "30.61", "emb_greedy": "63.67", "coherence": "41.76",
        "entropy_1": "6.869", "entropy_2": "10.82"},
    "seq2seq_history_dialogwae": {
        "bleu_1": "11.43", "bleu_2": "2.926", "bleu_3": "0.568", "bleu_4": "0.144",
        "distinct_1": "0.994", "distinct_2": "5.080", "distinct_3": "9.928",
        "emb_average": "38.68", "emb_extrema": "28.70", "emb_greedy": "63.39", "coherence": "41.06",
        "entropy_1": "7.009", "entropy_2": "11.09"},
    "seq2seq_history_gcl": dict(GCL_TABLE2A["seq2seq_history_gcl"]),  # printed identically in both tables
}  # fmt: skip

GCL_TABLE5_SOURCE = (
    "GCL (Findings of EMNLP 2020) Table 5: ablations of GCL on Seq2Seq, full Persona-Chat "
    "(the data of its Table 2(a)), in percent"
)
# GCL Table 5, Persona-Chat, Seq2Seq, in percent: the full method and (a)-(f), each without one
# component. Keys: our run (params section) of each row. The MLE baseline is Table 2(a)'s.
GCL_TABLE5: dict[str, dict[str, str]] = {
    "seq2seq_history_gcl": {"distinct_2": "5.093", "bleu_1": "13.66"},
    "seq2seq_history_gcl_no_group_wise": {"distinct_2": "2.070", "bleu_1": "12.87"},        # (a)
    "seq2seq_history_gcl_no_positive_groups": {"distinct_2": "2.270", "bleu_1": "13.12"},   # (b)
    "seq2seq_history_gcl_no_negative_groups": {"distinct_2": "3.532", "bleu_1": "13.21"},   # (c)
    "seq2seq_history_gcl_no_response_side": {"distinct_2": "4.964", "bleu_1": "13.34"},     # (d)
    "seq2seq_history_gcl_no_context_side": {"distinct_2": "4.892", "bleu_1": "13.17"},      # (e)
    "seq2seq_history_gcl_no_matching_scores": {"distinct_2": "3.809", "bleu_1": "13.56"},   # (f)
}  # fmt: skip


def paper_fraction(table: dict[str, dict[str, str]], model: str, key: str) -> float | None:
    """A paper value in the unit of reports/metrics (fractions; entropies in bits)."""
    value = table.get(model, {}).get(key)
    if value is None:
        return None
    percent = any(table is t for t in (GCL_TABLE2A, GCL_TABLE3, GCL_TABLE5))
    scale = 100.0 if percent and key not in BITS else 1.0
    return float(value) / scale
