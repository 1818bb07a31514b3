"""Names of the keys that ``Method.predict`` returns and the CLIs read (one spelling each)."""

LOGITS = "logits"  # (B, C) class logits
PROBS = "probs"  # (B, C) or (B, C - 1) class probabilities (without the background class)
EMBEDDING = "embedding"  # (B, D) retrieval embedding (L2-normalised)
CONCEPT_PROBS = "concept_probs"  # (B, K) concept probabilities
CONCEPT_LOGITS = "concept_logits"  # (B, K)
FEATURES = "features"  # (B, D) pooled backbone features (out-of-distribution statistics)
