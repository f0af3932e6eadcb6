"""Which files are images and how big they may be: known without importing Pillow, so listing a folder
(pipeline/dataset/) and starting the command line stay cheap."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")  # Pillow formats decoded (by content)
MAX_PIXELS = 80_000_000  # refuse larger images before decoding (a 57-byte PNG can claim 40000x40000)
MAX_FILE_BYTES = 256 << 20  # refuse larger files before reading them (no photo is that big)
