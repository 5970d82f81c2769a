"""Writes the paper's setting as a random-weight checkpoint for the engine: a 47-layer
GLM-4.7-Flash-shaped glm_moe_dsa (hidden 2048, 20 heads, q_lora 768, kv_lora 512, nope 192, rope 64,
v 256, vocab 154880, indexer 32 x 128, index_topk 2048; top-4 MoE with 1536 intermediate over 8
experts — fewer than the real 64 to fit one GPU — plus 1 shared expert; one dense first layer), bf16.

  python3 bench/cuda/paper_shape_model.py MODEL_DIR"""
import sys
import time

import torch
from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM


def main():
    start = time.time()
    config = GlmMoeDsaConfig(
        vocab_size=154880, hidden_size=2048, intermediate_size=10240, moe_intermediate_size=1536,
        num_hidden_layers=47, num_attention_heads=20, num_key_value_heads=20, n_routed_experts=8,
        num_experts_per_tok=4, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
        q_lora_rank=768, kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256,
        index_n_heads=32, index_head_dim=128, index_topk=2048, max_position_embeddings=262144,
        tie_word_embeddings=False, bos_token_id=154879, eos_token_id=154878, pad_token_id=None)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = GlmMoeDsaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(sys.argv[1], max_shard_size="4GB")
    print(f"paper-shape model: {params / 1e9:.2f}B parameters written in {time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
