#!/usr/bin/env python3
"""Writes a tiny random-weight llama-architecture GGUF model that llama.cpp's llama-server loads.

    make-tiny-gguf.py OUT.gguf [--seed N]

The model is useless as a language model (its weights are random) but it is a real model as far as
llama.cpp is concerned: 2 layers, n_embd 64, 4 heads, n_ff 128, context 256, f32 weights, a byte-level
GPT-2 style BPE vocabulary (the 256 bytes through GPT-2's byte-to-unicode map, a few merges, and the
ChatML special tokens) and a ChatML chat template, so /completion and /v1/chat/completions both work.
The output is deterministic for a given seed and under half a MiB.

Needs the `gguf` and `numpy` packages:

    python3 -m venv ~/.venvs/gguf && ~/.venvs/gguf/bin/pip install gguf numpy
    ~/.venvs/gguf/bin/python testbed/scripts/make-tiny-gguf.py tiny.gguf
    llama-server --model tiny.gguf -c 256 --port 8080
"""

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover - a hint for the user
    sys.exit("make-tiny-gguf: the `gguf` package is missing (pip install gguf numpy)")

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_LAYER = 2
N_FF = 128
N_CTX = 256
RMS_EPS = 1e-5
ROPE_BASE = 10000.0

# A ChatML template; llama.cpp's built-in template detection also recognises it (`<|im_start|>`).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A few merges, so the BPE tokenizer has a (required, non-empty) merge table; each merged pair
# is also a vocabulary entry.
MERGES = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("t", "h"), ("e", "r"), ("a", "n"), ("Ġ", "a"), ("o", "n")]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_vocab() -> tuple[list[str], list[int], list[float], list[str]]:
    byte_map = bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    types = [int(gguf.TokenType.NORMAL)] * 256
    for left, right in MERGES:
        tokens.append(left + right)
        types.append(int(gguf.TokenType.NORMAL))
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        types.append(int(gguf.TokenType.CONTROL))
    assert len(set(tokens)) == len(tokens), "duplicate tokens"
    scores = [0.0] * len(tokens)
    merges = [f"{left} {right}" for left, right in MERGES]
    return tokens, types, scores, merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument("--seed", type=int, default=0, help="numpy seed for the random weights (default 0)")
    args = parser.parse_args()

    tokens, types, scores, merges = build_vocab()
    n_vocab = len(tokens)
    eos_id = tokens.index("<|endoftext|>")
    im_end_id = tokens.index("<|im_end|>")

    rng = np.random.default_rng(args.seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) == GGUF (ne1, ne0): ne0 is the input dimension of a matmul weight.
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return np.ones((n,), dtype=np.float32)

    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name("rbee-tiny-llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(im_end_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_embd_kv, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_embd_kv, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", norm(N_EMBD))
    writer.add_tensor("output.weight", weight(n_vocab, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(args.out)


if __name__ == "__main__":
    main()
