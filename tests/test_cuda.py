"""GPU paths: each family trains under CUDA AMP (bf16, fp16 + GradScaler) and under NCCL DDP.

Skipped on machines without CUDA (CI and the 2-core dev machine). Run on a GPU box with
`python -m pytest tests/test_cuda.py -q`; it needs torch with CUDA, pydantic, pyyaml, safetensors,
pillow and scipy, but not Ray (the DDP check uses torch.distributed directly, which is what
ray.train.torch.prepare_model wraps).
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from creagen_ray.config import DataSpec, ImageRequest, TextRequest, validate_config  # noqa: E402
from creagen_ray.families import build_family  # noqa: E402
from creagen_ray.tokenizer import CharTokenizer  # noqa: E402

TEXT = ("the quick brown fox jumps over the lazy dog. " * 200).strip()
TOK = CharTokenizer.fit(TEXT)

CASES = {
    "rnn": ({"model": {"family": "rnn", "hidden_size": 128}}, "text"),
    "sentence-vae": ({"model": {"family": "vae", "arch": "sentence", "hidden_size": 128}}, "text"),
    "conv-vae": ({"model": {"family": "vae"}, "data": {"modality": "image"}}, "image"),
    "dcgan": ({"model": {"family": "gan"}, "data": {"modality": "image"}}, "image"),
    "wgan-gp": (
        {"model": {"family": "gan", "n_critic": 2}, "loss": {"name": "wasserstein"}, "data": {"modality": "image"}},
        "image",
    ),
}


def _batches(modality: str, n: int, device: str) -> list[dict[str, torch.Tensor]]:
    """Fixed synthetic batches: repeated text windows, or images of bright squares."""
    g = torch.Generator().manual_seed(0)
    out = []
    ids = torch.tensor(TOK.encode(TEXT))
    for _ in range(n):
        if modality == "text":
            starts = torch.randint(0, len(ids) - 33, (32,), generator=g)
            out.append({"tokens": torch.stack([ids[s : s + 33] for s in starts]).to(device)})
        else:
            img = torch.zeros(32, 1, 28, 28, dtype=torch.uint8)
            for i in range(32):
                x, y = torch.randint(0, 18, (2,), generator=g).tolist()
                img[i, 0, y : y + 10, x : x + 10] = 255
            out.append({"image": img.to(device)})
    return out


def _family(name: str, amp: str, device: str = "cuda"):
    raw, modality = CASES[name]
    cfg = validate_config({**raw, "train": {"amp": amp, "use_gpu": True}, "optimizer": {"lr": 2e-3}})
    spec = (
        DataSpec(modality="text", vocab_size=TOK.vocab_size, seq_len=32)
        if modality == "text"
        else DataSpec(modality="image", channels=1, image_size=28)
    )
    return build_family(cfg, spec, device=device, total_steps=200, tokenizer=TOK if modality == "text" else None), modality


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_family_trains_under_amp_on_cuda(name: str, amp: str) -> None:
    """Loss stays finite and (for likelihood families) falls; the family generates on the GPU."""
    fam, modality = _family(name, amp)
    assert fam.amp_dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert (fam.scaler is not None) == (amp == "fp16")
    batches = _batches(modality, 8, "cuda")
    first = fam.train_step(batches[0])["loss"]
    for i in range(120):
        m = fam.train_step(batches[i % len(batches)])
        assert math.isfinite(m["loss"]), (name, amp, i, m)
    ev = fam.evaluate(batches[:2])
    assert math.isfinite(ev[fam.val_metric])
    if name in ("rnn", "sentence-vae", "conv-vae"):
        assert m["loss"] < 0.7 * first, (name, amp, first, m["loss"])
    if modality == "text":
        out = fam.generate(TextRequest(prompt="the ", max_new_tokens=20, seed=1))
        assert set(out[0]) <= set(TOK.chars)
    else:
        img = fam.generate(ImageRequest(n=4, seed=1))
        assert img.shape == (4, 1, 28, 28)
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["rnn", "dcgan", "wgan-gp"])
def test_family_trains_under_nccl_ddp(name: str) -> None:
    """wrap_modules with NCCL DistributedDataParallel (world size 1): steps run, weights move."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        fam, modality = _family(name, "bf16")
        fam.wrap_modules(lambda m: DDP(m, device_ids=[0]))
        assert all(isinstance(m, DDP) for m in fam.modules.values())
        before = {k: v.clone() for k, v in fam.weights().items()}
        for b in _batches(modality, 6, "cuda"):
            assert math.isfinite(fam.train_step(b)["loss"])
        after = fam.weights()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        dist.destroy_process_group()
