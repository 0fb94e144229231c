"""The learning approaches GCL's Table 3 compares with, on the Seq2Seq backbone.

Objectives for the one training loop (``pipeline.train.train``'s ``objective`` hook), as
GCL's is: :mod:`.rl` (DeepRL, Li et al. 2016b) and :mod:`.adversarial` (Li et al. 2017);
decoding-time reranking: :mod:`.mmi` (Li et al. 2016a). The latent-variable learners are
generators: ``pipeline/models/cvae.py`` and ``pipeline/models/dialogwae.py``.
"""
