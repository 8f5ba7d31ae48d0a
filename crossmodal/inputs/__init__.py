"""What comes in: image bytes read lazily (files, Dify files, base64, URLs under the fetching rules) and decoded
safely (formats, EXIF orientation, size limits)."""
