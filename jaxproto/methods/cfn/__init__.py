"""CFN, Concepts from Neurons (IPMI 2025): opaque classifier -> SAE latents -> named CAVs ->
facility-location selection -> OMP rebuild -> logistic-regression concept bottleneck."""
