"""Encoders and their runtimes: model presets and loading (hub id, mirror, token, offline, local directory), the
dual encoder with its own preprocessing, precisions (bf16, ONNX Runtime, int8), dynamic batching, the route
table that picks a model by language and task, and the models warmed at plugin start."""
