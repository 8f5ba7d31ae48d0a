"""Text in pictures: PP-OCRv4 text detection, direction classification and recognition (Chinese and English) on
ONNX Runtime, with numpy and Pillow around it (no OpenCV, so no libGL).

    from crossmodal.ocr import read_text, read_texts, find_text_lines
    result = read_text(picture)          # OcrResult: lines (text, box, xyxy, confidence) and .text
    boxes = find_text_lines(picture)     # detection alone: does the picture hold text at all?

The model files are those inside the rapidocr-onnxruntime wheel (models.py); see docs/ocr.md for quality and speed.
"""

from crossmodal.ocr.reader import OcrLine, OcrResult, TextBox, find_text_lines, read_text, read_texts

__all__ = ["OcrLine", "OcrResult", "TextBox", "find_text_lines", "read_text", "read_texts"]
