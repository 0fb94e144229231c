"""Preprocessing: raw Persona-Chat to the Parquet inputs every model reads.

fetch (the raw files) -> parlai (one example per bot turn) -> text / vocab (normalisation,
the shared vocabulary) -> embeddings (Word2Vec) -> pmi (PEDNet's specific words;
pmi_calibration against the authors' files) -> persona_labels (BERT optimal-persona
labels) -> congeneric (PDNet's retrieved contexts). portable pins the float kernels so
that these outputs are byte-identical on any x86 CPU.
"""
