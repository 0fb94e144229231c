"""Group-wise contrastive learning (GCL, Cai et al. 2020; methods §3).

groups (BM25 candidate pools) -> msn / matching (the matching models that score them) ->
gcl (positive and negative groups, the frozen reference's cached scores, and the
contrastive objective that the one training loop in pipeline.train optimises).
"""
