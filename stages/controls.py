"""Stage `controls`: two deterministic "models" that bracket every metric.

    python -m stages.controls

``gold`` answers each test turn with its reference response (the ceiling of BLEU and the
persona use of the human speakers); ``constant`` answers every turn with params
`evaluate.constant_reply` (the floor: no diversity, and a persona score that owes
nothing to the persona, so its `persona_f1_gain` is about 0). Writes
reports/generations/{gold,constant}/control.parquet (schema GENERATIONS), which
`python -m stages.evaluate gold` / `... constant` score like any model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from pipeline import schema
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet
from pipeline.preprocessing.text import normalize

log = logging.getLogger(__name__)

TEST = "data/prepared/test.parquet"
CONTROLS = ("gold", "constant")


def control_rows(prepared: dict[str, list], hypotheses: list[str]) -> list[dict]:
    """GENERATIONS rows in test order, as stages.generate writes them; nothing is selected."""
    return [
        {
            "example_id": prepared["example_id"][i],
            "persona": list(prepared["persona"][i]),
            "context": prepared["query"][i],
            "reference": prepared["response"][i],
            "hypothesis": hypothesis,
            "selected_persona": None,
        }
        for i, hypothesis in enumerate(hypotheses)
    ]


def constant_reply(params: dict) -> str:
    """params `evaluate.constant_reply`, which must already be in the pipeline's normalised
    form: every metric splits on spaces, so "I love to read." would count other tokens."""
    reply = params.get("constant_reply")
    if not isinstance(reply, str) or not reply.strip():
        raise InputError("params.yaml", f"evaluate.constant_reply: expected a non-empty string, got {reply!r}")
    if normalize(reply) != reply:
        raise InputError(
            "params.yaml",
            f"evaluate.constant_reply: {reply!r} is not normalised text; write {normalize(reply)!r}",
        )
    return reply


def main() -> list[Path]:
    reply = constant_reply(load_params("evaluate"))
    prepared = read_parquet(TEST, columns=["example_id", "persona", "query", "response"]).to_pydict()
    if not prepared["example_id"]:
        raise InputError(TEST, "no test examples")
    hypotheses = {"gold": list(prepared["response"]), "constant": [reply] * len(prepared["example_id"])}
    written = []
    for control in CONTROLS:
        rows = control_rows(prepared, hypotheses[control])
        written.append(write_parquet(pa.Table.from_pylist(rows, schema=schema.GENERATIONS),
                                     Path("reports/generations") / control / "control.parquet"))  # fmt: skip
    log.info("controls: %d test turns; constant reply %r", len(prepared["example_id"]), reply)
    return written


if __name__ == "__main__":
    run_stage(main)
