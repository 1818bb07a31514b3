"""X-MIR: triplet-loss retrieval embedder with similarity saliency (specs/xmir.md)."""
