"""A trainable PyTorch `glm_moe_dsa` (GLM-5 / DeepSeek Sparse Attention) with IndexCache layer patterns.

Written from the model's definition (tests/reference/naive_dsa.h spells out the same math in float64);
its parameter names are the Hugging Face ones, so `hf_state_dict()` is the checkpoint transformers 5.17
loads, and the trainer checks on the GPU machine that transformers' logits match this model's.

What training needs beyond inference:
  attention modes   "dense" (causal, no indexer: DSA's dense pre-training) or "sparse" (top-k keys of
                    the nearest Full layer's indexer, per the layer pattern)
  probes            per layer the head-summed dense attention distribution (the indexer's KL target)
                    and the indexer's scores, for the warm-up, sparse-stage and distillation losses
  MoE               every routed expert runs on every token and the router's combine weights (zero
                    outside the top-k) mix them: the same function as sparse dispatch, and fast for
                    8 small experts on a GPU
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)


def rope_tables(positions, dim, theta, device):
    inv = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inv[None, :]
    return torch.cos(angles), torch.sin(angles)  # [T, dim/2]


def rope_interleaved(x, cos, sin):
    """transformers' interleaved RoPE on the last dim of x [B, T, d] or [B, T, H, d]: pairs (2i, 2i+1)
    rotate by pos · theta^(-2i/d); the result is de-interleaved (rotated evens, then odds)."""
    if x.dim() == 4:
        cos, sin = cos[:, None], sin[:, None]
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1).to(x.dtype)


class Indexer(nn.Module):
    """DSA's lightning indexer: I[t, s] = Σ_h w[t, h] · ReLU(D^-1/2 q[t, h]·k[s]), w = weights_proj · H^-1/2."""

    def __init__(self, c):
        super().__init__()
        self.n_heads, self.head_dim, self.rope_dim = c["index_n_heads"], c["index_head_dim"], c["qk_rope_head_dim"]
        self.wq_b = nn.Linear(c["q_lora_rank"], self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(c["hidden_size"], self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(c["hidden_size"], self.n_heads, bias=False)

    def forward(self, h, qa, cos, sin):
        """Scores [B, T, T] (float32, -inf above the diagonal)."""
        b, t, _ = h.shape
        r = self.rope_dim
        q = self.wq_b(qa).view(b, t, self.n_heads, self.head_dim)
        q = torch.cat([rope_interleaved(q[..., :r], cos, sin), q[..., r:]], dim=-1)
        k = self.k_norm(self.wk(h).float()).to(q.dtype)
        k = torch.cat([rope_interleaved(k[..., :r], cos, sin), k[..., r:]], dim=-1)
        w = self.weights_proj(h) * self.n_heads ** -0.5
        # [B, T, H, T] is the largest tensor of training: kept in the autocast dtype (bf16 on the GPU).
        logits = torch.relu(torch.einsum("bthd,bsd->bths", q, k) * self.head_dim ** -0.5)
        scores = torch.einsum("bths,bth->bts", logits, w).float()
        causal = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        return scores.masked_fill(~causal, float("-inf"))


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.nope, self.rope, self.v = (c["num_attention_heads"], c["qk_nope_head_dim"],
                                                c["qk_rope_head_dim"], c["v_head_dim"])
        self.kv_lora = c["kv_lora_rank"]
        hid, qk = c["hidden_size"], self.nope + self.rope
        self.q_a_proj = nn.Linear(hid, c["q_lora_rank"], bias=False)
        self.q_a_layernorm = RMSNorm(c["q_lora_rank"], 1e-6)
        self.q_b_proj = nn.Linear(c["q_lora_rank"], self.h * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hid, self.kv_lora + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_lora, 1e-6)
        self.kv_b_proj = nn.Linear(self.kv_lora, self.h * (self.nope + self.v), bias=False)
        self.o_proj = nn.Linear(self.h * self.v, hid, bias=False)
        self.indexer = Indexer(c)

    def qkv(self, h, qa, cos, sin):
        """Per-head q, k [B, H, T, nope+rope] and v [B, H, T, v]."""
        b, t, _ = h.shape
        q = self.q_b_proj(qa).view(b, t, self.h, self.nope + self.rope)
        q = torch.cat([q[..., :self.nope], rope_interleaved(q[..., self.nope:], cos, sin)], dim=-1)
        ckv = self.kv_a_proj_with_mqa(h)
        latent, k_pe = ckv[..., :self.kv_lora], rope_interleaved(ckv[..., self.kv_lora:], cos, sin)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(b, t, self.h, self.nope + self.v)
        k = torch.cat([kv[..., :self.nope], k_pe[:, :, None, :].expand(b, t, self.h, self.rope)], dim=-1)
        return q.transpose(1, 2), k.transpose(1, 2), kv[..., self.nope:].transpose(1, 2)

    def forward(self, q, k, v, mask):
        """mask None: causal; else a boolean [B, T, T] of the keys each query may attend to."""
        scale = (self.nope + self.rope) ** -0.5
        if mask is None:  # flash attention wants equal q/k/v head dims: pad v, drop the padding after
            vp = F.pad(v, (0, q.shape[-1] - v.shape[-1]))
            out = F.scaled_dot_product_attention(q, k, vp, is_causal=True, scale=scale)[..., :self.v]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.h * self.v))

    @staticmethod
    def head_summed_probs(q, k):
        """The layer's dense causal attention, summed over heads and normalized: [B, T, T] float32."""
        t = q.shape[2]
        logits = torch.einsum("bhtd,bhsd->bhts", q.float(), k.float()) * q.shape[-1] ** -0.5
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        p = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1).sum(1)
        return p / p.sum(-1, keepdim=True)


class DenseMlp(nn.Module):
    def __init__(self, hid, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hid, inter, bias=False)
        self.up_proj = nn.Linear(hid, inter, bias=False)
        self.down_proj = nn.Linear(inter, hid, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, hid, n_experts):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, hid))
        # Steers selection only (aux-loss-free balancing); updated by the trainer, not by gradients.
        self.register_buffer("e_score_correction_bias", torch.zeros(n_experts))


class Moe(nn.Module):
    """Sigmoid router, top-k by score + correction bias, normalized weights × routed_scaling_factor,
    plus the shared experts (n_group = topk_group = 1)."""

    def __init__(self, c):
        super().__init__()
        hid, e, inter = c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"]
        self.top_k, self.scale, self.norm = c["num_experts_per_tok"], c["routed_scaling_factor"], c["norm_topk_prob"]
        self.gate = Router(hid, e)
        self.w_gate = nn.Parameter(torch.empty(e, inter, hid))
        self.w_up = nn.Parameter(torch.empty(e, inter, hid))
        self.w_down = nn.Parameter(torch.empty(e, hid, inter))
        self.shared_experts = DenseMlp(hid, inter * c["n_shared_experts"])
        self.last_load = None  # tokens per expert of the last forward (for the bias update)

    def forward(self, x):
        sig = torch.sigmoid(F.linear(x, self.gate.weight).float())
        picks = torch.topk(sig + self.gate.e_score_correction_bias, self.top_k, dim=-1).indices
        w = sig.gather(-1, picks)
        if self.norm:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        combine = torch.zeros_like(sig).scatter(-1, picks, w * self.scale)
        self.last_load = torch.zeros_like(sig).scatter(-1, picks, 1.0).flatten(0, -2).sum(0).detach()
        g = torch.einsum("bth,eih->btei", x, self.w_gate)
        u = torch.einsum("bth,eih->btei", x, self.w_up)
        y = torch.einsum("btei,ehi->bteh", F.silu(g) * u, self.w_down)
        return torch.einsum("bteh,bte->bth", y, combine.to(y.dtype)) + self.shared_experts(x)


class Layer(nn.Module):
    def __init__(self, c, dense_mlp):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.mlp = DenseMlp(c["hidden_size"], c["intermediate_size"]) if dense_mlp else Moe(c)


class Probes:
    """What a forward pass collects per layer for the indexer losses (only what was asked for)."""

    def __init__(self, want_attention=False, want_scores=False, detach_indexer_input=True):
        self.want_attention, self.want_scores = want_attention, want_scores
        self.detach_indexer_input = detach_indexer_input
        self.attention = {}  # layer -> head-summed dense attention [B, T, T]
        self.scores = {}     # Full layer -> indexer scores [B, T, T]
        self.selection = {}  # layer -> boolean top-k mask [B, T, T] (sparse mode)


class DsaModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c, i < c["first_k_dense_replace"]) for i in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def init_weights(self, std=0.02):
        n = len(self.layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "w_down")):
                nn.init.normal_(p, std=std / math.sqrt(2 * n))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, ids, mode="dense", pattern=None, probes=None):
        """Logits [B, T, V]. mode "dense" or "sparse"; pattern: one 'F'/'S' per layer (sparse mode)."""
        c = self.c
        b, t = ids.shape
        cos, sin = rope_tables(torch.arange(t, device=ids.device), c["qk_rope_head_dim"],
                               c["rope_parameters"]["rope_theta"], ids.device)
        x = self.embed_tokens(ids)
        topk = min(c["index_topk"], t)
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        mask = None
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            qa = attn.q_a_layernorm(attn.q_a_proj(h))
            q, k, v = attn.qkv(h, qa, cos, sin)
            full = mode == "sparse" and pattern[i] == "F"
            if full or (probes is not None and probes.want_scores and mode == "dense"):
                hi, qi = (h.detach(), qa.detach()) if probes is None or probes.detach_indexer_input else (h, qa)
                scores = attn.indexer(hi, qi, cos, sin)
                if probes is not None and probes.want_scores:
                    probes.scores[i] = scores
                if full:
                    with torch.no_grad():
                        picks = torch.topk(scores, topk, dim=-1).indices
                        mask = torch.zeros(b, t, t, dtype=torch.bool, device=ids.device).scatter_(-1, picks, True)
                        mask &= causal
            if probes is not None and probes.want_attention:
                with torch.no_grad():
                    probes.attention[i] = Attention.head_summed_probs(q, k)
            if probes is not None and mode == "sparse":
                probes.selection[i] = mask
            x = x + attn(q, k, v, mask if mode == "sparse" else None)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x))

    # ----- Hugging Face checkpoint layout -------------------------------------------------------

    def hf_state_dict(self, full_layers=None):
        """Tensors under transformers' names; indexer weights only for `full_layers` (None: all)."""
        out = {}
        for name, p in self.state_dict().items():
            parts = name.split(".")
            if name.startswith("layers."):
                layer = int(parts[1])
                if ".indexer." in name and full_layers is not None and layer not in full_layers:
                    continue
                if name.endswith(("w_gate", "w_up", "w_down")):
                    kind = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}[parts[-1]]
                    prefix = "model." + ".".join(parts[:-1])
                    for e in range(p.shape[0]):
                        out[f"{prefix}.experts.{e}.{kind}.weight"] = p[e]
                    continue
                out["model." + name] = p
            elif name.startswith("lm_head"):
                out[name] = p
            else:
                out["model." + name] = p
        return out

    def load_hf_state_dict(self, tensors):
        """The inverse of hf_state_dict; layers without indexer tensors keep their indexer as is."""
        own = {}
        experts = {}
        for name, value in tensors.items():
            key = name[len("model."):] if name.startswith("model.") else name
            parts = key.split(".")
            if ".experts." in key:
                prefix = ".".join(parts[:parts.index("experts")])
                e, kind = int(parts[parts.index("experts") + 1]), parts[-2]
                experts.setdefault((prefix, kind), {})[e] = value
            else:
                own[key] = value
        for (prefix, kind), by_e in experts.items():
            own[f"{prefix}.w_{kind[:-len('_proj')]}"] = torch.stack([by_e[e] for e in sorted(by_e)])
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [m for m in missing if ".indexer." not in m]
        if missing or unexpected:
            raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
