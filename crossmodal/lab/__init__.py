"""The laboratory: generated scenes, the demo tokenizer, training, evaluation, calibration fitting and the demo.
Nothing on the plugin's runtime path imports it (tests/test_imports.py)."""
