"""HyperFlexis: multi-SLO LLM serving."""
