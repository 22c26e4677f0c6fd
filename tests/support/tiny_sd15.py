"""A tiny random-weight Stable Diffusion 1.5 checkpoint that ComfyUI loads as SD 1.5.

:func:`write_tiny_sd15_checkpoint` writes one ``.safetensors`` file with the key prefixes
of a real SD 1.5 checkpoint (``model.diffusion_model.``, ``cond_stage_model.``,
``first_stage_model.``), fp16, 278 MB, in about a second. ComfyUI 0.3.75's
``CheckpointLoaderSimple`` detects it as ``SD15`` and the editor's default workflow runs
on it end to end on a CPU. It writes to a path rather than returning bytes: the file is
mostly the text encoder, and bytes would hold a second copy of it in memory.

Why each part has the shape it has (ComfyUI 0.3.75 source):

* UNet (``model.diffusion_model.``, ~13.6 M parameters). ``comfy/model_detection.py``
  derives the whole UNet config from the keys present; ``comfy/supported_models.py``'s
  ``SD15`` then only requires ``model_channels`` 320 (``input_blocks.0.0.weight`` has 320
  outputs), ``context_dim`` 768 (``attn2.to_k`` of the first input block's transformer
  reads 768 features), ``use_linear_in_transformer`` False (``proj_in`` is a 1x1 conv, 4-d)
  and no ``label_emb`` (``adm_in_channels`` None). The smallest UNet with those is one
  level (``channel_mult [1]``), one res block with one transformer block
  (``input_blocks.1``; the context width is read from input blocks only), no middle block
  (no ``middle_block.*`` keys: ``transformer_depth_middle`` -2) and the two output res
  blocks (640→320, skip convolution included) that one level needs, without transformers.
  Heads: SD15 fixes ``num_heads`` 8 (40 channels each). Latents stay 4-channel, so the
  network runs at 8x8 for a 64x64 image.
* Text encoder (``cond_stage_model.transformer.text_model.``, 123.1 M parameters, 246 MB
  of the file). ``SD15.clip_target`` is always ``SD1ClipModel``, whose size comes from
  ``comfy/sd1_clip_config.json`` (CLIP ViT-L/14: 12 layers, width 768, MLP 3072, 49408
  tokens, 77 positions), never from the checkpoint. It loads with ``strict=False`` and
  ComfyUI's ops skip weight initialisation, so a missing or smaller layer would leave
  ``torch.empty`` memory in the model (and log ``clip missing``): it has to be full size.
  As in the real ``v1-5-pruned-emaonly`` file there is no ``text_projection`` (SD 1.5
  does not use the pooled output; ComfyUI ignores that key when it is missing).
* VAE (``first_stage_model.``, 2.4 M parameters). ``comfy/sd.py``'s ``VAE`` loads a state
  dict with ``taesd_decoder.1.weight`` as TAESD (``comfy/taesd/taesd.py``: 64-channel
  convolutions, three x2 upsamplings, so an 8x8 latent decodes to 64x64 pixels) instead
  of the 83 M-parameter KL autoencoder. ``vae_scale`` 0.18215 and ``vae_shift`` 0 are the
  values ComfyUI's own ``VAELoader`` gives an SD 1.5 TAESD.

Weights are random, not trained: the image is noise-like, but every layer, the sampler
and the decoder really run. Matrices and convolutions are fp16 numbers with a random sign
and mantissa at a fixed exponent, about 1/sqrt(fan_in) in size (activations stay near
unit scale through the layers); norms have weight 1 and bias 0; other biases are 0.
The values are made from random integer bits, without a normal sampler or a float32 to
float16 cast, which are several times slower on the 2-core CI machine. Each tensor's
generator is seeded with ``(seed, crc32(name))``: a tensor depends only on the seed and
its name, so files for one seed are byte-identical (for one numpy version).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from comfy_worker.job.preflight import JOB_MARKER_INPUT

VERSION = "1"
"""Bumped whenever the file's content for a given seed changes (it is in the metadata)."""

FILENAME = "v1-5-pruned-emaonly-fp16.safetensors"
"""The name the editor's default workflow (templates' ``default.json``) loads."""

UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer.text_model."
VAE = "first_stage_model."

MODEL_CHANNELS = 320
TIME_EMBED_DIM = 4 * MODEL_CHANNELS
CONTEXT_DIM = 768
LATENT_CHANNELS = 4
CLIP_LAYERS = 12
CLIP_MLP = 3072
CLIP_VOCAB = 49408
CLIP_POSITIONS = 77
TAESD_CHANNELS = 64
SD15_VAE_SCALE = 0.18215

# A tensor is (kind, shape): "w" random weight, "emb" random embedding, "one", "zero".
Spec = tuple[str, tuple[int, ...]]


# --- layer layouts ------------------------------------------------------------------------


def _linear(name: str, n_in: int, n_out: int, bias: bool = True) -> Iterator[tuple[str, Spec]]:
    yield f"{name}.weight", ("w", (n_out, n_in))
    if bias:
        yield f"{name}.bias", ("zero", (n_out,))


def _conv(name: str, n_in: int, n_out: int, k: int, bias: bool = True
          ) -> Iterator[tuple[str, Spec]]:
    yield f"{name}.weight", ("w", (n_out, n_in, k, k))
    if bias:
        yield f"{name}.bias", ("zero", (n_out,))


def _norm(name: str, n: int) -> Iterator[tuple[str, Spec]]:
    yield f"{name}.weight", ("one", (n,))
    yield f"{name}.bias", ("zero", (n,))


def _res_block(p: str, n_in: int, n_out: int) -> Iterator[tuple[str, Spec]]:
    """``ResBlock`` of ``openaimodel.py`` (GroupNorm, SiLU, conv; time embedding; again)."""
    yield from _norm(f"{p}in_layers.0", n_in)
    yield from _conv(f"{p}in_layers.2", n_in, n_out, 3)
    yield from _linear(f"{p}emb_layers.1", TIME_EMBED_DIM, n_out)
    yield from _norm(f"{p}out_layers.0", n_out)
    yield from _conv(f"{p}out_layers.3", n_out, n_out, 3)
    if n_in != n_out:
        yield from _conv(f"{p}skip_connection", n_in, n_out, 1)


def _spatial_transformer(p: str, ch: int) -> Iterator[tuple[str, Spec]]:
    """``SpatialTransformer`` with one block, conv ``proj_in``/``proj_out`` (SD 1.x)."""
    yield from _norm(f"{p}norm", ch)
    yield from _conv(f"{p}proj_in", ch, ch, 1)
    b = f"{p}transformer_blocks.0."
    for attn, kv_dim in (("attn1", ch), ("attn2", CONTEXT_DIM)):
        yield from _linear(f"{b}{attn}.to_q", ch, ch, bias=False)
        yield from _linear(f"{b}{attn}.to_k", kv_dim, ch, bias=False)
        yield from _linear(f"{b}{attn}.to_v", kv_dim, ch, bias=False)
        yield from _linear(f"{b}{attn}.to_out.0", ch, ch)
    yield from _linear(f"{b}ff.net.0.proj", ch, 2 * 4 * ch)  # GEGLU: value and gate
    yield from _linear(f"{b}ff.net.2", 4 * ch, ch)
    for i in (1, 2, 3):
        yield from _norm(f"{b}norm{i}", ch)
    yield from _conv(f"{p}proj_out", ch, ch, 1)


def _unet() -> Iterator[tuple[str, Spec]]:
    ch = MODEL_CHANNELS
    yield from _linear(f"{UNET}time_embed.0", ch, TIME_EMBED_DIM)
    yield from _linear(f"{UNET}time_embed.2", TIME_EMBED_DIM, TIME_EMBED_DIM)
    yield from _conv(f"{UNET}input_blocks.0.0", LATENT_CHANNELS, ch, 3)
    yield from _res_block(f"{UNET}input_blocks.1.0.", ch, ch)
    yield from _spatial_transformer(f"{UNET}input_blocks.1.1.", ch)
    for i in (0, 1):  # each takes the matching input block's output as a skip: 320 + 320
        yield from _res_block(f"{UNET}output_blocks.{i}.0.", 2 * ch, ch)
    yield from _norm(f"{UNET}out.0", ch)
    yield from _conv(f"{UNET}out.2", ch, LATENT_CHANNELS, 3)


def _clip_l() -> Iterator[tuple[str, Spec]]:
    d = CONTEXT_DIM
    yield f"{CLIP}embeddings.token_embedding.weight", ("emb", (CLIP_VOCAB, d))
    yield f"{CLIP}embeddings.position_embedding.weight", ("emb", (CLIP_POSITIONS, d))
    for i in range(CLIP_LAYERS):
        p = f"{CLIP}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield from _linear(f"{p}self_attn.{proj}", d, d)
        yield from _norm(f"{p}layer_norm1", d)
        yield from _linear(f"{p}mlp.fc1", d, CLIP_MLP)
        yield from _linear(f"{p}mlp.fc2", CLIP_MLP, d)
        yield from _norm(f"{p}layer_norm2", d)
    yield from _norm(f"{CLIP}final_layer_norm", d)


def _taesd_block(p: str) -> Iterator[tuple[str, Spec]]:
    """``taesd.Block(64, 64)``: conv, ReLU, conv, ReLU, conv; identity skip (no keys)."""
    for i in (0, 2, 4):
        yield from _conv(f"{p}conv.{i}", TAESD_CHANNELS, TAESD_CHANNELS, 3)


def _taesd() -> Iterator[tuple[str, Spec]]:
    c = TAESD_CHANNELS
    enc = f"{VAE}taesd_encoder."
    yield from _conv(f"{enc}0", 3, c, 3)
    yield from _taesd_block(f"{enc}1.")
    for down in (2, 6, 10):  # stride-2 conv, then three blocks
        yield from _conv(f"{enc}{down}", c, c, 3, bias=False)
        for i in range(down + 1, down + 4):
            yield from _taesd_block(f"{enc}{i}.")
    yield from _conv(f"{enc}14", c, LATENT_CHANNELS, 3)

    dec = f"{VAE}taesd_decoder."  # 0 is Clamp, 2 ReLU, 6/11/16 Upsample: no weights
    yield from _conv(f"{dec}1", LATENT_CHANNELS, c, 3)
    for first in (3, 8, 13):  # three blocks, upsample, conv without bias
        for i in range(first, first + 3):
            yield from _taesd_block(f"{dec}{i}.")
        yield from _conv(f"{dec}{first + 4}", c, c, 3, bias=False)
    yield from _taesd_block(f"{dec}18.")
    yield from _conv(f"{dec}19", c, 3, 3)
    yield f"{VAE}vae_scale", ("scale", ())
    yield f"{VAE}vae_shift", ("zero", ())


def tiny_sd15_layout() -> dict[str, tuple[int, ...]]:
    """Every tensor name of the checkpoint with its shape (cheap: no values)."""
    return {name: shape for name, (_, shape) in _specs()}


def _specs() -> Iterator[tuple[str, Spec]]:
    yield from _unet()
    yield from _clip_l()
    yield from _taesd()


# --- values ---------------------------------------------------------------------------------


def _random_fp16(rng: np.random.Generator, shape: tuple[int, ...], scale: float
                 ) -> np.ndarray:
    """fp16 values ±[2**e, 2**(e+1)) with a random sign and mantissa; ``2**e`` is ``scale``
    rounded down to a power of two. Built from random bits: no float arithmetic at all."""
    exponent = min(max(math.floor(math.log2(scale)), -14), 15)
    bits = rng.integers(0, 1 << 16, size=math.prod(shape), dtype=np.uint16)
    bits &= np.uint16(0x83FF)  # keep the sign bit and the 10 mantissa bits
    bits |= np.uint16((exponent + 15) << 10)  # IEEE half: exponent bias 15
    return bits.view(np.float16).reshape(shape)


def _values(name: str, spec: Spec, seed: int) -> np.ndarray:
    kind, shape = spec
    if kind == "one":
        return np.ones(shape, dtype=np.float16)
    if kind == "zero":
        return np.zeros(shape, dtype=np.float16)
    if kind == "scale":
        return np.full(shape, SD15_VAE_SCALE, dtype=np.float16)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    if kind == "emb":
        return _random_fp16(rng, shape, 0.02)
    fan_in = math.prod(shape[1:])
    return _random_fp16(rng, shape, 1.0 / math.sqrt(fan_in))


def iter_tiny_sd15_tensors(seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, fp16 array)`` for every tensor, one at a time, in a fixed order."""
    for name, spec in _specs():
        yield name, _values(name, spec, seed)


def metadata(seed: int) -> dict[str, str]:
    """The file's metadata: one key, since ``safetensors`` writes keys in a random order."""
    return {"generator": f"comfy-worker tests tiny_sd15 v{VERSION} seed={seed}"}


def write_tiny_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint for ``seed`` to ``path`` (atomically) and return ``path``.

    Same seed, same bytes. Peak memory is about the file's size (the arrays; 315 MB RSS
    measured for the whole Python process), ~0.5-1 s on the 2-core CI machine.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.incomplete")
    try:
        save_file(dict(iter_tiny_sd15_tensors(seed)), str(tmp), metadata=metadata(seed))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


POSITIVE = "beautiful scenery nature glass bottle landscape, purple galaxy bottle,"
NEGATIVE = "text, watermark"
SEED = 685468484323813


def default_workflow_prompt(width: int = 64, height: int = 64, steps: int = 2
                            ) -> dict[str, Any]:
    """The API-format twin of the templates' ``default.json`` (UI format), with the size
    and step count a client would set. Node ids are the UI file's."""
    return {
        "3": {"class_type": "KSampler",
              "inputs": {"seed": SEED, "steps": steps, "cfg": 8, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                         "positive": ["6", 0], "negative": ["7", 0],
                         "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FILENAME}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": "SD1.5", "images": ["8", 0]}},
    }


def as_a_client_sets_it(ui: dict[str, Any], width: int, height: int, steps: int
                         ) -> dict[str, Any]:
    """default.json with the size and step count changed in the widgets' saved values."""
    for node in ui["nodes"]:
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [width, height]
        elif node["type"] == "KSampler":  # seed, control after generate, steps, cfg, ...
            node["widgets_values"][2] = steps
    return ui


def plain_prompt(prompt: dict[str, Any]) -> dict[str, Any]:
    """An API prompt without the editor's ``_meta`` titles and the worker's job marker."""
    return {node_id: {"class_type": node["class_type"],
                      "inputs": {k: v for k, v in node["inputs"].items()
                                 if k != JOB_MARKER_INPUT}}
            for node_id, node in prompt.items()}
