"""A model reference with options: ``name`` or ``name?dimension=512&max_pixels=401408&instruction=...``.

The options shape a VLM embedding model's vectors (crossmodal/encoders/vlm_encoder.py): the Matryoshka size,
the image budget and the query instruction. A collection records its model as a reference that carries the
options that decide its vectors (dimension always, a custom instruction when there is one), so every later
search of the collection embeds its query the same way, whatever the settings say by then. Dual encoders
(CLIP, SigLIP) take no options: their references are plain names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from crossmodal.errors import CrossmodalError

MIN_DIMENSION = 32
MIN_PIXELS = 32 * 32 * 4  # four merged patches: Qwen3-VL's smallest image
MAX_INSTRUCTION_CHARS = 1000
OPTION_NAMES = ("dimension", "max_pixels", "instruction")
# What decides a vector (and so goes into a collection's record); max_pixels only sets an image's cost.
IDENTITY_OPTIONS = ("dimension", "instruction")


@dataclass(frozen=True)
class ModelOptions:
    dimension: int | None = None  # None: the model's full size
    max_pixels: int | None = None  # None: the model's own processor setting
    instruction: str | None = None  # None: the model's own query prompt

    @classmethod
    def parse(cls, values: dict | None, param_prefix: str = "") -> "ModelOptions":
        values = {k: v for k, v in (values or {}).items() if v not in (None, "")}
        unknown = sorted(set(values) - set(OPTION_NAMES))
        if unknown:
            raise CrossmodalError(f"unknown model option(s) {', '.join(unknown)}; the options are "
                                  f"{', '.join(OPTION_NAMES)}", param="model")
        dimension = _int(values.get("dimension"), param_prefix + "dimension", MIN_DIMENSION)
        max_pixels = _int(values.get("max_pixels"), param_prefix + "max_pixels", MIN_PIXELS)
        instruction = values.get("instruction")
        if instruction is not None:
            instruction = str(instruction).strip() or None
            if instruction and len(instruction) > MAX_INSTRUCTION_CHARS:
                raise CrossmodalError(f"has {len(instruction)} characters; at most {MAX_INSTRUCTION_CHARS}",
                                      param=param_prefix + "instruction")
        return cls(dimension, max_pixels, instruction)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in OPTION_NAMES if getattr(self, k) is not None}

    def merged_under(self, other: "ModelOptions") -> "ModelOptions":
        """These options, each unset one taken from ``other``."""
        return ModelOptions(**{k: getattr(self, k) if getattr(self, k) is not None else getattr(other, k)
                               for k in OPTION_NAMES})

    def __bool__(self) -> bool:
        return bool(self.as_dict())


@dataclass(frozen=True)
class ModelRef:
    name: str
    options: ModelOptions = field(default_factory=ModelOptions)

    @classmethod
    def parse(cls, ref: str) -> "ModelRef":
        name, _, query = (ref or "").partition("?")
        if not query:
            return cls(name)
        return cls(name, ModelOptions.parse(dict(parse_qsl(query, keep_blank_values=True))))

    def __str__(self) -> str:
        options = self.options.as_dict()
        return f"{self.name}?{urlencode(options)}" if options else self.name

    def identity_part(self) -> str:
        """The reference as a collection records it: only the options that decide vectors."""
        kept = {k: v for k, v in self.options.as_dict().items() if k in IDENTITY_OPTIONS}
        return f"{self.name}?{urlencode(kept)}" if kept else self.name


def has_options(ref: str | None) -> bool:
    return "?" in (ref or "")


def base_name(ref: str | None) -> str:
    return (ref or "").partition("?")[0]


def _int(value, param: str, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise CrossmodalError(f"'{value}' is not a whole number", param=param) from None
    if number < minimum:
        raise CrossmodalError(f"{number} is too small; use at least {minimum} or leave it empty", param=param)
    return number
