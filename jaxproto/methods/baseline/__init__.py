"""Black-box baseline: backbone + global pooling + linear head."""
