"""Rerank: second-stage scoring of first-stage candidates (text cross-encoders, BLIP ITM, region rescoring)."""
