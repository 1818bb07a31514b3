"""Med-MICN: concept embeddings + Gödel-logic rules fused with image features (specs/medmicn.md)."""
