#!/usr/bin/env python3
"""PyTorch speed peer for `moectl bench`.

A faithful eager-mode PyTorch implementation of moectl's model, training
step and data sampling: byte-level decoder with RMSNorm, interleaved RoPE,
causal softmax attention (one fused qkv projection) and a dropless top-k MoE
(SwiGLU experts with fused gate/up, always-on shared SwiGLU, softmax router
with renormalised top-k gates, switch aux loss and router z-loss), trained
with AdamW, linear warm-up + cosine LR and global grad-norm clipping.

It times full training steps (batch sampling, forward, backward, clipping,
optimizer step), skipping the first --warmup-steps, and prints one JSON line
on stdout.  Diagnostics go to stderr.
"""

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import resource
import statistics
import sys
import time

VOCAB = 256


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--shared", type=int, default=1)
    p.add_argument("--expert-hidden", type=int, default=512)
    p.add_argument("--aux", type=float, default=0.01)
    p.add_argument("--z", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--eps", type=float, default=1e-5, help="RMSNorm epsilon")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--measure-steps", type=int, default=20)
    p.add_argument("--autocast", action="store_true",
                   help="forward under torch.autocast('cpu', bfloat16)")
    a = p.parse_args(argv)
    if a.d_model % a.heads or (a.d_model // a.heads) % 2:
        p.error("--d-model / --heads must be an even integer")
    if not 1 <= a.top_k <= a.experts:
        p.error("--top-k must be in [1, --experts]")
    if a.measure_steps < 1 or a.warmup_steps < 0:
        p.error("--measure-steps must be >= 1 and --warmup-steps >= 0")
    return a


def setup_process(threads):
    """Runtime setup that has to happen before torch is imported.

    This torch links a generic BLAS (OpenBLAS), whose thread pool
    torch.set_num_threads() does not control: pin it to the same count, and
    let idle OpenMP workers sleep instead of spinning, so the two pools do not
    steal the same cores from each other (2x faster at 2 threads here).
    Keep glibc from handing large freed blocks back to the kernel, so the
    per-step activation/optimizer temporaries are not page-faulted in again
    every step (what jemalloc/tcmalloc would give a tuned PyTorch CPU run).
    """
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)   # glibc's maximum
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    ARGS = parse_args()
    setup_process(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, C, H, T, theta):
        super().__init__()
        self.H, self.hd = H, C // H
        self.scale = 1.0 / math.sqrt(self.hd)
        self.wqkv = nn.Linear(C, 3 * C, bias=False)
        self.wo = nn.Linear(C, C, bias=False)
        # Interleaved RoPE on pairs (2i, 2i+1): angle = t * theta^(-2i/hd).
        inv = theta ** (-torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        # (T, 1, hd/2): broadcasts over the head axis of (B, T, 2H, hd/2).
        self.register_buffer("cos", ang.cos().float()[:, None, :], persistent=False)
        self.register_buffer("sin", ang.sin().float()[:, None, :], persistent=False)
        # Additive causal mask, fused into the score GEMM through baddbmm.
        mask = torch.full((T, T), float("-inf")).triu_(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H, hd = self.H, self.hd
        qkv = self.wqkv(x)                                  # (B, T, 3C)
        # RoPE on q and k together: (B, T, 2H, hd/2, 2).
        qk = qkv[..., : 2 * C].reshape(B, T, 2 * H, hd // 2, 2)
        x0, x1 = qk.unbind(-1)
        cos, sin = self.cos[:T], self.sin[:T]
        qk = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        qk = qk.view(B, T, 2, H, hd).permute(2, 0, 3, 1, 4)  # (2, B, H, T, hd)
        q = qk[0].reshape(B * H, T, hd)
        k = qk[1].reshape(B * H, T, hd)
        v = qkv[..., 2 * C:].view(B, T, H, hd).transpose(1, 2).reshape(B * H, T, hd)
        att = torch.baddbmm(self.mask[:T, :T], q, k.transpose(1, 2), alpha=self.scale)
        att = att.softmax(dim=-1)
        y = torch.bmm(att, v)                               # (B*H, T, hd)
        y = y.view(B, H, T, hd).transpose(1, 2).reshape(B, T, C)
        return self.wo(y)


def swiglu(x, w13, w2):
    gate, up = F.linear(x, w13).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w2)


class MoE(nn.Module):
    def __init__(self, C, E, K, F_, n_shared, aux_coef, z_coef):
        super().__init__()
        self.E, self.K, self.F = E, K, F_
        self.aux_coef, self.z_coef = aux_coef, z_coef
        self.router = nn.Linear(C, E, bias=False)
        # Routed experts stored stacked; unbind() once per forward gives one
        # cheap stack() in backward instead of E full-size select gradients.
        self.w13 = nn.Parameter(torch.empty(E, 2 * F_, C))  # [gate | up]
        self.w2 = nn.Parameter(torch.empty(E, C, F_))
        S = n_shared * F_
        self.has_shared = S > 0
        if self.has_shared:
            self.shared_w13 = nn.Parameter(torch.empty(2 * S, C))
            self.shared_w2 = nn.Parameter(torch.empty(C, S))

    def forward(self, x):
        B, T, C = x.shape
        E, K = self.E, self.K
        xf = x.reshape(-1, C)
        N = xf.shape[0]

        logits = self.router(xf)                            # (N, E)
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(K, dim=-1)                # (N, K)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)

        # Sort the N*K assignments by expert, gather the tokens once.
        flat_e = top_i.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        token_idx = order.div(K, rounding_mode="floor")
        counts = torch.bincount(flat_e, minlength=E)
        xs = xf.index_select(0, token_idx)                  # (N*K, C)
        gs = gates.reshape(-1).index_select(0, order).unsqueeze(1)

        outs = []
        w13s, w2s = self.w13.unbind(0), self.w2.unbind(0)
        for e, xe in enumerate(xs.split(counts.tolist(), dim=0)):
            if xe.shape[0]:
                outs.append(swiglu(xe, w13s[e], w2s[e]))
        ys = torch.cat(outs, dim=0) * gs                    # (N*K, C)

        if self.has_shared:
            base = swiglu(xf, self.shared_w13, self.shared_w2)
        else:
            base = torch.zeros_like(xf)
        out = base.index_add(0, token_idx, ys)

        # Switch-style load balancing: alpha * E * sum_i f_i * P_i.
        aux = x.new_zeros(())
        if self.aux_coef > 0:
            f = counts.to(probs.dtype) / (N * K)            # no gradient
            aux = self.aux_coef * E * torch.dot(f, probs.mean(dim=0))
        z = x.new_zeros(())
        if self.z_coef > 0:
            z = self.z_coef * torch.logsumexp(logits, dim=-1).square().mean()
        return out.view(B, T, C), aux + z, aux.detach(), z.detach()


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        C = a.d_model
        self.norm1 = RMSNorm(C, a.eps)
        self.attn = Attention(C, a.heads, a.seq, a.rope_theta)
        self.norm2 = RMSNorm(C, a.eps)
        self.moe = MoE(C, a.experts, a.top_k, a.expert_hidden, a.shared, a.aux, a.z)

    def forward(self, x):
        h = x + self.attn(self.norm1(x))
        m, reg, aux, z = self.moe(self.norm2(h))
        return h + m, reg, aux, z


class MoEModel(nn.Module):
    def __init__(self, a):
        super().__init__()
        C, L = a.d_model, a.layers
        self.wte = nn.Embedding(VOCAB, C)
        self.blocks = nn.ModuleList(Block(a) for _ in range(L))
        self.norm_f = RMSNorm(C, a.eps)
        self.lm_head = nn.Linear(C, VOCAB, bias=False)

        std, std_out = 0.02, 0.02 / math.sqrt(2 * L)
        with torch.no_grad():
            nn.init.normal_(self.wte.weight, 0.0, std)
            nn.init.normal_(self.lm_head.weight, 0.0, std)
            for b in self.blocks:
                nn.init.normal_(b.attn.wqkv.weight, 0.0, std)
                nn.init.normal_(b.attn.wo.weight, 0.0, std_out)
                nn.init.normal_(b.moe.router.weight, 0.0, std)
                nn.init.normal_(b.moe.w13, 0.0, std)
                nn.init.normal_(b.moe.w2, 0.0, std_out)
                if b.moe.has_shared:
                    nn.init.normal_(b.moe.shared_w13, 0.0, std)
                    nn.init.normal_(b.moe.shared_w2, 0.0, std_out)

    def forward(self, idx, targets):
        x = self.wte(idx)
        reg = aux = z = 0.0
        for b in self.blocks:
            x, r, a_, z_ = b(x)
            reg, aux, z = reg + r, aux + a_, z + z_
        logits = self.lm_head(self.norm_f(x))
        ce = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
        return ce + reg, ce.detach(), aux, z


def count_params(model, a):
    total = sum(p.numel() for p in model.parameters())
    per_expert = 3 * a.expert_hidden * a.d_model
    active = total - a.layers * (a.experts - a.top_k) * per_expert
    return total, active


# ----------------------------------------------------------------------------
# Data, schedule, optimizer
# ----------------------------------------------------------------------------

class Batches:
    def __init__(self, path, val_fraction, T, seed):
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
        n_train = int(len(data) * (1.0 - val_fraction))
        if n_train < T + 1:
            raise SystemExit(f"{path}: {n_train} training bytes, need at least {T + 1}")
        self.train = data[:n_train]
        self.T = T
        self.offsets = np.arange(T + 1)
        self.rng = np.random.default_rng(seed)

    def next(self, B):
        starts = self.rng.integers(0, len(self.train) - self.T, size=B)
        w = torch.from_numpy(self.train[starts[:, None] + self.offsets]).long()
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def lr_at(a, step):
    """moectl's schedule; step counts from 1."""
    if a.warmup > 0 and step <= a.warmup:
        return a.lr * step / a.warmup
    decay = a.steps - a.warmup
    if decay <= 0 or step >= a.steps:
        return a.min_lr
    progress = (step - a.warmup) / decay
    return a.min_lr + (a.lr - a.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model, a):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]   # RMSNorm weights
    groups = [{"params": decay, "weight_decay": a.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, foreach=True, **kw)
    except TypeError:  # torch without the foreach argument
        return torch.optim.AdamW(groups, **kw)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(a):
    torch.set_num_interop_threads(1)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.set_default_dtype(torch.float32)

    data = Batches(a.corpus, a.val_fraction, a.seq, a.seed)
    model = MoEModel(a)
    model.train()
    opt = make_optimizer(model, a)
    params = [p for p in model.parameters()]
    total, active = count_params(model, a)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"params {total:,} (active {active:,})", file=sys.stderr)

    tokens = a.batch * a.seq
    times, losses = [], []
    n_steps = a.warmup_steps + a.measure_steps
    for step in range(1, n_steps + 1):
        t0 = time.perf_counter()
        x, y = data.next(a.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16,
                            enabled=a.autocast):
            loss, ce, aux, z = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip) \
            if a.grad_clip > 0 else None
        lr = lr_at(a, step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        dt = time.perf_counter() - t0

        measured = step > a.warmup_steps
        if measured:
            times.append(dt)
            losses.append(ce.item())
        gn = f" grad_norm {gnorm.item():.3f}" if gnorm is not None else ""
        print(f"step {step:4d} loss {ce.item():.4f} aux {float(aux):.4f} "
              f"z {float(z):.5f} lr {lr:.3e}{gn} {dt * 1e3:.1f} ms "
              f"{tokens / dt:.0f} tok/s{'' if measured else ' (warm-up)'}",
              file=sys.stderr)

    result = {
        "tokens_per_s": statistics.median(tokens / t for t in times),
        "step_ms_median": statistics.median(times) * 1e3,
        "threads": torch.get_num_threads(),
        "steps": len(times),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch": torch.__version__,
        "autocast": a.autocast,
        "params": total,
        "active_params": active,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(ARGS)
