"""Persona-based dialogue generation: the library behind the DVC stages.

- ``preprocessing``: raw Persona-Chat -> prepared examples, vocabulary, embeddings, PMI
  specific words, optimal-persona labels, congeneric contexts;
- ``models``: every generator (Seq2Seq, GPMN, PostKS, PEDNet, HRED, HRAN, Transformer,
  CVAE, DialogWAE, ...) on shared layers, behind one generator interface;
- ``contrastive``: GCL's candidate pools, matching models and contrastive objective;
- ``learners``: the other learning approaches of GCL's Table 3 (MMI, DeepRL, adversarial);
- ``evaluation``: metrics, seed statistics and claims, the report, diagnostics;
- the core: ``dataset`` (batches), ``train`` (the one training loop), ``decode`` (greedy
  and beam search), ``chat``, ``io``, ``schema`` and ``params_schema``.

Nothing here does work at import time; stages in ``stages/`` call into it.
"""
