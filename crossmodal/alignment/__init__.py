"""Alignment: image + text -> similarity, calibrated match probability, per-phrase scores and boxes, heat map
(global or tiled with Gaussian fusion), and the PNG overlay that draws it."""
