"""Rules for fused lipgraph-domain activations (filled below)."""
