"""Column layout of every Parquet artifact, in one place.

Rows of every per-split artifact line up with ``data/prepared/<split>.parquet`` (same
order, same ``example_id``), so stages can join by position and check by id.
"""

from __future__ import annotations

import pyarrow as pa

SPLITS = ("train", "valid", "test")

# Special tokens, shared by every model (vocabulary ids 0..len-1 in this order).
PAD, UNK, BOS, EOS, KEY, EOT, SILENCE = "<pad>", "<unk>", "<s>", "</s>", "<KEY>", "<eot>", "__silence__"
SPECIALS = (PAD, UNK, BOS, EOS, KEY, EOT, SILENCE)

_str_list = pa.list_(pa.string())
_f32_list = pa.list_(pa.float32())
_i32_list = pa.list_(pa.int32())

# data/prepared/<split>.parquet — one row per bot turn. Text is PEDNet-normalised and
# space-tokenised (methods §1).
PREPARED = pa.schema(
    [
        ("example_id", pa.string()),  # "<split>-<dialogue:05d>-<turn:02d>"
        ("dialogue_id", pa.string()),  # "<split>-<dialogue:05d>"
        ("turn", pa.int32()),  # 0-based index of the bot turn within its dialogue
        ("persona", _str_list),  # the bot's own persona ("your persona:")
        ("partner_persona", _str_list),  # "partner's persona:" (other/both variants)
        ("history", _str_list),  # every earlier utterance, both speakers, oldest first
        ("query", pa.string()),  # partner's last utterance X (SILENCE if the bot opens)
        ("response", pa.string()),  # bot response Y
        ("candidates", _str_list),  # ParlAI label candidates (empty for *_no_cands)
    ]
)

# data/prepared/vocab.parquet — specials first, then by count desc, token asc.
VOCAB = pa.schema([("token", pa.string()), ("count", pa.int64())])

# data/embeddings/vectors.parquet — one row per vocabulary token, same order.
EMBEDDINGS = pa.schema([("token", pa.string()), ("vector", _f32_list)])

# data/pmi/<split>.parquet
PMI = pa.schema(
    [
        ("example_id", pa.string()),
        ("specific_words", _str_list),  # context words with PMI(wx, P) >= threshold, best first
        ("specific_scores", _f32_list),
        ("masked_query", pa.string()),  # X~: the query with specific words replaced by <KEY>
    ]
)

# data/persona_labels/<split>.parquet
PERSONA_LABELS = pa.schema(
    [
        ("example_id", pa.string()),
        ("optimal_persona", pa.int32()),  # index into `persona`; null = None label
        ("similarities", _f32_list),  # cosine(Y, p_i) for every persona sentence
        ("query_similarities", _f32_list),  # cosine(X, p_i): what a selector may see at test time
    ]
)

# data/congeneric/<split>.parquet — K_max most similar *training* X~ (self excluded).
CONGENERIC = pa.schema(
    [
        ("example_id", pa.string()),
        ("congeneric_rows", _i32_list),  # row positions in data/prepared/train.parquet
        ("congeneric_scores", _f32_list),
    ]
)

# data/groups/train.parquet — GCL candidate pools (methods §3), one row per training row
# (same order). One BM25 retrieval over training contexts gives candidate pairs (c', r')
# (rows of train.parquet, top then bottom BM25); as in the authors' code the same
# candidates serve both sides: the response side pairs (c, r'), the context side (c', r).
# Empty lists where the context is empty (the bot opens the dialogue). The MSN matching
# probabilities, aligned with `candidate_rows`, are null until the `msn` issue fills them.
GROUPS = pa.schema(
    [
        ("example_id", pa.string()),
        ("candidate_rows", _i32_list),  # row positions in train.parquet: top then bottom BM25
        ("bm25_scores", _f32_list),
        ("is_top", pa.list_(pa.bool_())),  # True for top-BM25 candidates, False for bottom
        ("msn_response_side", _f32_list),  # MSN(c, r') per candidate (null: not scored yet)
        ("msn_context_side", _f32_list),  # MSN(c', r) per candidate (null: not scored yet)
    ]
)
# data/msn_scores/train.parquet (stage score_groups) is data/groups with both MSN columns filled.

# data/scored_groups/train.parquet — the group of every training row (same order): pairs
# as (context row, response row) of train.parquet with s = clamp(2(q − 0.5), −1, 1).
# Positives: the original pair (s = 1, side "original") first, then per side the k best
# (best first); negatives: per side the k worst (worst first). Sides: "response" pairs
# (c, r'), "context" pairs (c', r). Response side before context side.
SCORED_GROUPS = pa.schema(
    [
        ("example_id", pa.string()),
        ("positive_context_rows", _i32_list),
        ("positive_response_rows", _i32_list),
        ("positive_scores", _f32_list),
        ("positive_sides", _str_list),
        ("negative_context_rows", _i32_list),
        ("negative_response_rows", _i32_list),
        ("negative_scores", _f32_list),
        ("negative_sides", _str_list),
    ]
)

# data/reference_scores/<reference model>/train.parquet — log p_n(r | c) of the frozen MLE
# reference (eval mode) for every pair of data/scored_groups, in the same order.
REFERENCE_SCORES = pa.schema(
    [
        ("example_id", pa.string()),
        ("positive_log_probs", _f32_list),
        ("negative_log_probs", _f32_list),
    ]
)

# reports/generations/<model>.parquet — one row per test turn, the same for every model.
GENERATIONS = pa.schema(
    [
        ("example_id", pa.string()),
        ("persona", _str_list),
        ("context", pa.string()),  # the query the model answered
        ("reference", pa.string()),
        ("hypothesis", pa.string()),
        ("selected_persona", pa.int32()),  # index into `persona`; null = no selection
        # The collapse diagnostic (pipeline.decode.query_log_probs): the reference's log-prob
        # per token (</s> included) under the model, given its own context and given another
        # test example's (a seeded derangement); the persona stays its own. Null for the
        # controls (no model) and in files written before these columns existed.
        ("log_p_own", pa.float32()),
        ("log_p_shuffled", pa.float32()),
    ]
)
# Columns of GENERATIONS that older files lack: readers treat them as null.
GENERATIONS_OPTIONAL = ("log_p_own", "log_p_shuffled")
# The layout of those older files (still accepted everywhere).
GENERATIONS_LEGACY = pa.schema([f for f in GENERATIONS if f.name not in GENERATIONS_OPTIONAL])

MODELS = ("seq2seq", "gpmn", "postks", "pednet")  # PEDNet Table 2
GCL_MODELS = ("seq2seq_history_gcl", "pednet_gcl")  # GCL runs: <reference run>_gcl  # GCL applied to a generator (issue 5)
