"""The fast preprocessing and draft decode, with the model's own processor as the reference."""

import io

import numpy as np
import pytest
from PIL import Image

from crossmodal.inputs.images import decode_image
from crossmodal.encoders.models import load_encoder
from crossmodal.encoders.preprocess import FastPreprocessor
from crossmodal.lab.scenes import generate_scene

SIZES = [(224, 224), (640, 480), (480, 640), (301, 97), (97, 301), (20, 13), (1000, 1000)]


def _processors(tiny_clip_dir, tiny_chinese_clip_dir, tmp_path_factory):
    from transformers import AutoProcessor

    from tiny_models import save_tiny_siglip

    siglip = save_tiny_siglip(tmp_path_factory.mktemp("siglip"))
    return {name: AutoProcessor.from_pretrained(path) for name, path in [
        ("demo-shapes", load_encoder("demo-shapes").model_dir), ("tiny-clip", tiny_clip_dir),
        ("chinese-clip", tiny_chinese_clip_dir), ("siglip", siglip)]}


@pytest.fixture(scope="module")
def processors(tiny_clip_dir, tiny_chinese_clip_dir, tmp_path_factory):
    return _processors(tiny_clip_dir, tiny_chinese_clip_dir, tmp_path_factory)


@pytest.mark.parametrize("name", ["demo-shapes", "tiny-clip", "chinese-clip", "siglip"])
def test_pixels_match_the_processor_to_float_rounding(name, processors):
    processor = processors[name]
    fast = FastPreprocessor.from_processor(processor)
    assert fast is not None
    images = [generate_scene(860_000_000 + k, w, h, 2).image for k, (w, h) in enumerate(SIZES)]
    for image in images:
        reference = processor(images=[image], return_tensors="pt")["pixel_values"].numpy()
        ours = fast.normalise([fast.to_uint8(image)]).numpy()
        assert ours.shape == reference.shape, (name, image.size)
        assert np.abs(ours - reference).max() < 1e-4, (name, image.size)
        lean = fast.normalise_numpy([fast.to_uint8(image)])  # the torch-free runtime's
        assert lean.dtype == np.float32 and lean.flags.c_contiguous
        assert np.abs(lean - reference).max() < 1e-4, (name, image.size)


def test_a_batch_normalises_like_single_images(processors):
    fast = FastPreprocessor.from_processor(processors["demo-shapes"])
    arrays = [fast.to_uint8(generate_scene(k, 200 + 10 * k, 180).image) for k in range(5)]
    batch = fast.normalise(arrays).numpy()
    assert np.array_equal(batch, np.concatenate([fast.normalise([a]).numpy() for a in arrays]))


def test_processors_it_cannot_reproduce_are_left_to_the_library(processors):
    import copy

    padded = copy.deepcopy(processors["tiny-clip"])
    padded.image_processor.do_pad = True
    assert FastPreprocessor.from_processor(padded) is None
    odd = copy.deepcopy(processors["tiny-clip"])
    odd.image_processor.size = {"longest_edge": 64}
    assert FastPreprocessor.from_processor(odd) is None


def _jpeg(image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


@pytest.mark.slow
def test_draft_decode_keeps_embeddings_and_reports_the_stored_size():
    """A 2000 x 1500 JPEG decoded at reduced scale: the demo model's embedding agrees with the fully
    decoded image through the processor (cosine >= 0.999), and width/height stay the stored ones."""
    encoder = load_encoder("demo-shapes")
    fast = encoder.fast_preprocessor
    cosines = []
    for k in range(12):
        data = _jpeg(generate_scene(870_000_000 + k, 2000, 1500, 2).image)
        full = decode_image(data)
        drafted = decode_image(data, min_size=fast.draft_request)
        assert (drafted.width, drafted.height) == (full.width, full.height) == (2000, 1500)
        assert drafted.image.size[0] < 2000 and min(drafted.image.size) >= encoder.image_size
        reference = encoder.encode_images([full.image])[0]
        ours = encoder.embed_pixels(fast.normalise([fast.to_uint8(drafted.image)]))[0]
        cosines.append(float(reference @ ours))
    assert min(cosines) >= 0.999, cosines


def test_draft_decode_follows_exif_rotation():
    image = generate_scene(3, 1600, 800, 1).image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    data = _jpeg(image, exif=exif.tobytes())
    full = decode_image(data)
    drafted = decode_image(data, min_size=lambda w, h: (w // 4, h // 4))
    assert (full.width, full.height) == (drafted.width, drafted.height) == (800, 1600)
    assert drafted.image.size == (200, 400)


def test_ingest_stores_what_the_processor_path_gives(tmp_path):
    """End to end: pipelined ingest of JPEGs against fp32 vectors of the full decode through the processor."""
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    paths = []
    for k in range(5):
        path = tmp_path / f"scene{k}.jpg"
        path.write_bytes(_jpeg(generate_scene(871_000_000 + k, 1200, 900, 1).image))
        paths.append(path)
    service = Service(Settings(data_dir=str(tmp_path / "store"), model="demo-shapes"))
    report = service.ingest([IngestItem(image=ImageInput.from_path(p)) for p in paths], "jpegs")
    assert report["added"] == 5
    encoder = service.encoder()
    for path in paths:
        reference = encoder.encode_images([Image.open(path).convert("RGB")])[0]
        hit = service.store.query("jpegs", reference.tolist(), 1)[0]
        assert hit.payload["source"] == str(path) and hit.score >= 0.999
        assert (hit.payload["width"], hit.payload["height"]) == (1200, 900)


def test_the_encoders_preprocess_is_its_processors(tiny_clip_dir):
    """Every path that embeds PIL images (Embed, Search by image, Align, region rerank) goes through
    Encoder.preprocess: the processor's pixels, whatever the mode and size."""
    for encoder in (load_encoder("demo-shapes"), load_encoder(str(tiny_clip_dir))):
        images = [generate_scene(k, w, h, 1).image for k, (w, h) in enumerate(SIZES)]
        images += [images[1].convert("L"), images[2].convert("RGBA"), images[3].convert("P")]
        reference = encoder.processor(images=images, return_tensors="pt")["pixel_values"].numpy()
        assert np.abs(encoder.preprocess(images).numpy() - reference).max() < 1e-4
