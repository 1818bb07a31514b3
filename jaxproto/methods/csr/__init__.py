"""CSR — Concept-based Similarity Reasoning (CVPR 2025; specs/csr.md): concept CAMs, local concept
vectors, projector + M prototypes per concept, max-pooled similarity scores, linear task head, and
doctor-in-the-loop interaction (boxes, concept rejection, atlas pruning)."""
