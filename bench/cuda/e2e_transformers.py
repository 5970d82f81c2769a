"""transformers 5.17 eager side of the end-to-end benchmark, and the model both sides run.

  python3 bench/cuda/e2e_transformers.py MODEL_DIR > transformers.json

Builds the brief's 16-layer random-weight glm_moe_dsa (hidden 512, vocab 8192, 8 heads, indexer 8 x 64,
index_topk 256, 8 experts top-2; bf16), saves it to MODEL_DIR for the C++ engine, then times
GlmMoeDsaForCausalLM (attn_implementation="eager", bf16, on the GPU) on the same weights: prefill of
2K/8K/16K tokens and decode ms/token at 16K, all-Full and with index_topk_freq 4 (the engine's
--index-freq 4 resolves the same pattern; the resolved list is printed to stderr)."""
import json
import sys
import time

import torch
from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM

LAYERS = 16


def config(freq):
    extra = {"index_topk_freq": freq} if freq > 1 else {}
    cfg = GlmMoeDsaConfig(
        vocab_size=8192, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256, num_hidden_layers=LAYERS,
        num_attention_heads=8, num_key_value_heads=8, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64,
        qk_rope_head_dim=32, v_head_dim=64, index_n_heads=8, index_head_dim=64, index_topk=256,
        max_position_embeddings=32768, tie_word_embeddings=False, bos_token_id=8191, eos_token_id=8190,
        pad_token_id=None, **extra)
    print(f"index_topk_freq {freq}: indexer_types {list(cfg.indexer_types)}", file=sys.stderr)
    return cfg


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, (time.perf_counter() - start) * 1e3


def prompt(length):
    # The same ids as bench/cuda/cuda_e2e_bench.cc's Prompt().
    return torch.tensor([[(i * 7919 + 13) % (8192 - 2) for i in range(length)]], device="cuda")


def bench(model, lengths, decode_context, steps, reps):
    out = {"prefill": [], "decode": None}
    with torch.no_grad():
        for length in lengths:
            ids = prompt(length)
            times = []
            for r in range(reps + 1):
                _, ms = timed(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1))
                if r > 0:
                    times.append(ms)
            times.sort()
            out["prefill"].append({"tokens": length, "ms": times[len(times) // 2]})
            print(f"transformers prefill {length}: {times[len(times) // 2]:.1f} ms", file=sys.stderr)
        result = model(input_ids=prompt(decode_context), use_cache=True, logits_to_keep=1)
        cache, token = result.past_key_values, result.logits[:, -1:].argmax(-1)
        times = []
        for step in range(steps + 2):
            result, ms = timed(lambda: model(input_ids=token, past_key_values=cache, use_cache=True))
            cache, token = result.past_key_values, result.logits[:, -1:].argmax(-1)
            if step >= 2:
                times.append(ms)
        times.sort()
        out["decode"] = {"context": decode_context, "steps": len(times), "ms_per_token": times[len(times) // 2]}
        print(f"transformers decode at {decode_context}: {out['decode']['ms_per_token']:.2f} ms/token", file=sys.stderr)
    return out


def main():
    model_dir = sys.argv[1]
    torch.manual_seed(0)
    model = GlmMoeDsaForCausalLM(config(1)).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    model = model.to("cuda").eval()
    model.config._attn_implementation = "eager"
    report = {"params": sum(p.numel() for p in model.parameters()), "attn_implementation": "eager",
              "dtype": "bfloat16", "runs": {}}
    report["runs"]["all_full"] = bench(model, [2048, 8192, 16384], 16384, 16, 2)
    del model
    torch.cuda.empty_cache()
    model = GlmMoeDsaForCausalLM.from_pretrained(model_dir, config=config(4), dtype=torch.bfloat16,
                                                 attn_implementation="eager").to("cuda").eval()
    report["runs"]["freq4"] = bench(model, [2048, 8192, 16384], 16384, 16, 2)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
