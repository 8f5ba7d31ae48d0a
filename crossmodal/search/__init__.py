"""Search: text, image or fused queries over a collection, with filters, region search and an optional
second stage."""
