#!/usr/bin/env python3
"""Forward+backward tokens/s of a Qwen3/Llama-shaped decoder in PyTorch, the reference for
`navigen-train bench train` (CPU) and `scripts/gpu-check.sh` (CUDA). Same shapes, batch, sequence
length and thread count as our run.

Usage: torch_train.py CONFIG_JSON BATCH SEQ STEPS THREADS [--device cpu|cuda] [--dtype f32|bf16]
[--attention eager|sdpa]
(prints one JSON object; peak_rss_mb is the process's peak resident memory, peak_gpu_mb the CUDA
allocator's peak)
"""
import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rope(x, cos, sin):
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        h, hd = c["hidden_size"], c["head_dim"]
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], hd
        self.q = torch.nn.Linear(h, self.nh * hd, bias=False)
        self.k = torch.nn.Linear(h, self.nkv * hd, bias=False)
        self.v = torch.nn.Linear(h, self.nkv * hd, bias=False)
        self.o = torch.nn.Linear(self.nh * hd, h, bias=False)
        self.qk_norm = c["model_type"] == "qwen3"
        self.sdpa = False
        if self.qk_norm:
            self.qn = RMSNorm(hd, c["rms_norm_eps"])
            self.kn = RMSNorm(hd, c["rms_norm_eps"])
        self.n1 = RMSNorm(h, c["rms_norm_eps"])
        self.n2 = RMSNorm(h, c["rms_norm_eps"])
        i = c["intermediate_size"]
        self.gate = torch.nn.Linear(h, i, bias=False)
        self.up = torch.nn.Linear(h, i, bias=False)
        self.down = torch.nn.Linear(i, h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        if self.qk_norm:
            q, k = self.qn(q), self.kn(k)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, 1)
        v = v.repeat_interleave(rep, 1)
        # Explicit matmul + mask + softmax, like ours (no fused kernel).
        if self.sdpa:
            # PyTorch's fused attention (flash / memory-efficient kernels): causal rows, one segment.
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = q @ k.transpose(-1, -2) / self.hd**0.5 + mask
            a = torch.softmax(s, -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("batch", type=int)
    ap.add_argument("seq", type=int)
    ap.add_argument("steps", type=int)
    ap.add_argument("threads", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    # eager: the same math as ours (explicit masked softmax); sdpa: F.scaled_dot_product_attention.
    ap.add_argument("--attention", default="eager", choices=["eager", "sdpa"])
    a = ap.parse_args()
    c = json.loads(open(a.config).read())
    b, t, steps, threads = a.batch, a.seq, a.steps, a.threads
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(c["vocab_size"], c["hidden_size"])
    layers = torch.nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
    norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
    head = torch.nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
    mods = [emb, layers, norm, head]
    for m in mods:
        m.to(device=dev, dtype=dtype)
    for layer in layers:
        layer.sdpa = a.attention == "sdpa"
    params = [p for m in mods for p in m.parameters()]
    hd = c["head_dim"]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(t).float()[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, None].to(dev, dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, None].to(dev, dtype)
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None].to(dev, dtype)
    ids = torch.randint(0, c["vocab_size"], (b, t)).to(dev)
    # Loss on a quarter of the positions, as with answer-only targets.
    pick = torch.arange(0, b * t, 4).to(dev)
    cuda = dev.type == "cuda"
    times = []
    for step in range(steps + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = emb(ids)
        for layer in layers:
            x = layer(x, cos, sin, mask)
        x = norm(x).reshape(b * t, -1)[pick]
        loss = F.cross_entropy(head(x).float(), ids.reshape(-1)[pick])
        for p in params:
            p.grad = None
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        if step > 0:  # first step warms up
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    out = {"torch_version": torch.__version__, "device": a.device, "dtype": a.dtype, "threads": threads,
           "attention": a.attention,
           "seconds_per_step": med, "tokens_per_s": b * t / med,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
