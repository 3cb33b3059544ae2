#!/usr/bin/env python3
"""An OpenAI-compatible completions server around HF transformers, as an independent reference
for apl's remote backend (not project code: a measuring instrument, like ../shared/peers).

It answers what vLLM and a correct text server answer, computed by transformers in f32 with
eager attention (the reference the engine's parity tests use):
  POST /v1/completions   token-id prompts (a list, or a list of lists) or one text prompt;
                         n, max_tokens, min_tokens, temperature, top_p, seed, logit_bias,
                         logprobs (generated tokens, raw log-probs at T = 1, keys `token_id:N`
                         with return_tokens_as_token_ids), return_token_ids, prompt_logprobs
                         (vLLM's shape), echo (prompt tokens with log-probs from the
                         distribution *before* each token, text_offset in characters)
  POST /tokenize         vLLM's {model, prompt, add_special_tokens} -> {tokens, count}
  POST /extras/tokenize  llama-cpp-python's {input} -> {tokens}
  GET  /v1/models
  POST /v1/load_lora_adapter  {lora_name, lora_path}: a PEFT adapter served under that name

  python bench/hf_server.py --model DIR [--port 8089] [--name base]
"""
import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--port", type=int, default=8089)
ap.add_argument("--name", default="base")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)

tok = PreTrainedTokenizerFast(tokenizer_file=f"{args.model}/tokenizer.json")
base = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager").eval()
models = {args.name: base}
cfg = json.load(open(f"{args.model}/config.json"))
eos = cfg.get("eos_token_id")
eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
for name in ["<|endoftext|>", "<|im_end|>", "</s>"]:
    i = tok.convert_tokens_to_ids(name)
    if isinstance(i, int) and i >= 0 and i != tok.unk_token_id:
        eos_ids.add(i)
lock = threading.Lock()


def encode(text):
    return tok(text, add_special_tokens=True)["input_ids"]


def piece_after(ids, j):
    a, b = tok.decode(ids[:j]), tok.decode(ids[: j + 1])
    return (b[len(a):] if b.startswith(a) else b).replace("\ufffd", "")


@torch.no_grad()
def position_logprobs(model, ids):
    """log_softmax of the logits at every position: [len(ids), vocab]."""
    out = model(torch.tensor([ids]))
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def top(lp_row, k):
    if k <= 0:
        return []
    v, i = torch.topk(lp_row, k)
    return list(zip(i.tolist(), v.tolist()))


@torch.no_grad()
def generate(model, ids, body, gen):
    max_tokens = int(body.get("max_tokens", 16))
    min_tokens = int(body.get("min_tokens", 0) or 0)
    t = float(body.get("temperature", 1.0))
    top_p = float(body.get("top_p", 1.0))
    bias = {int(k): float(v) for k, v in (body.get("logit_bias") or {}).items()}
    k = int(body.get("logprobs") or 0)
    past, x, toks, lps, tops, finish = None, torch.tensor([ids]), [], [], [], "length"
    for step in range(max_tokens):
        out = model(x, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        lsm = torch.log_softmax(logits, dim=-1)
        w = logits.clone()
        for i, b in bias.items():
            w[i] += b
        if step < min_tokens:
            for e in eos_ids:
                w[e] = float("-inf")
        if t == 0.0:
            nxt = int(torch.argmax(w))
        else:
            p = torch.softmax(w / t, dim=-1)
            if top_p < 1.0:
                sp, si = torch.sort(p, descending=True)
                keep = torch.cumsum(sp, 0) - sp < top_p
                p = torch.zeros_like(p).scatter(0, si[keep], sp[keep])
            nxt = int(torch.multinomial(p, 1, generator=gen))
        toks.append(nxt)
        lps.append(float(lsm[nxt]))
        tops.append(top(lsm, k) + [(nxt, float(lsm[nxt]))])
        if nxt in eos_ids:
            finish = "stop"
            break
        x = torch.tensor([[nxt]])
    return toks, lps, tops, finish


def completions(body):
    model = models.get(body.get("model"), None)
    if model is None:
        return 404, {"error": {"message": f"model {body.get('model')!r} not served"}}
    prompt = body["prompt"]
    text_mode = isinstance(prompt, str)
    if text_mode:
        prompts = [encode(prompt)]
    elif prompt and isinstance(prompt[0], list):
        prompts = prompt
    else:
        prompts = [prompt]
    n = int(body.get("n", 1))
    k = int(body.get("logprobs") or 0)
    as_ids = bool(body.get("return_tokens_as_token_ids"))
    gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
    choices = []
    for ids in prompts:
        lp = position_logprobs(model, ids) if (body.get("prompt_logprobs") is not None or body.get("echo")) else None
        prompt_logprobs = None
        if body.get("prompt_logprobs") is not None:
            pk = int(body["prompt_logprobs"])
            prompt_logprobs = [None]
            for j in range(1, len(ids)):
                row = lp[j - 1]
                e = {str(i): {"logprob": v, "rank": r + 1, "decoded_token": tok.decode([i])} for r, (i, v) in enumerate(top(row, pk))}
                actual = float(row[ids[j]])
                e[str(ids[j])] = {"logprob": actual, "rank": int((row > actual).sum()) + 1, "decoded_token": tok.decode([ids[j]])}
                prompt_logprobs.append(e)
        for _ in range(n):
            toks, lps, tops, finish = generate(model, ids, body, gen)
            key = (lambda i: f"token_id:{i}") if as_ids else (lambda i: tok.decode([i]))
            all_ids = ids + toks
            if body.get("echo") and text_mode:
                # Prompt tokens with log-probs from the distribution before each (none for the first).
                pieces = [piece_after(all_ids, j) for j in range(len(all_ids))]
                offsets, o = [], 0
                for p in pieces:
                    offsets.append(o)
                    o += len(p)
                vals = [None] + [float(lp[j - 1][ids[j]]) for j in range(1, len(ids))] + lps
                tl = [None] + [dict([(pieces_of(i), v) for i, v in top(lp[j - 1], k)] + [(pieces[j], float(lp[j - 1][ids[j]]))]) for j in range(1, len(ids))]
                tl += [dict([(pieces_of(i), v) for i, v in t_]) for t_ in tops]
                logprobs = {"text_offset": offsets, "token_logprobs": vals, "tokens": pieces, "top_logprobs": tl}
                text = prompt + tok.decode(toks)
            elif k > 0 or body.get("logprobs") == 0:
                pieces = [key(t) if as_ids else piece_after(all_ids, len(ids) + j) for j, t in enumerate(toks)]
                logprobs = {
                    "text_offset": list(range(len(toks))),
                    "token_logprobs": lps,
                    "tokens": pieces,
                    "top_logprobs": [dict((key(i) if as_ids else pieces_of(i), v) for i, v in t_) for t_ in tops],
                }
                text = tok.decode(toks)
            else:
                logprobs, text = None, tok.decode(toks)
            c = {"index": len(choices), "text": text, "logprobs": logprobs, "finish_reason": finish}
            if body.get("return_token_ids"):
                c["token_ids"] = toks
                c["prompt_token_ids"] = ids
            if prompt_logprobs is not None:
                c["prompt_logprobs"] = prompt_logprobs
            choices.append(c)
    return 200, {"id": "cmpl-hf", "object": "text_completion", "model": body.get("model"), "choices": choices,
                 "usage": {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0, "total_tokens": 0}}


def pieces_of(i):
    return tok.decode([i])


def load_lora(body):
    from peft import PeftModel
    m = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager")
    models[body["lora_name"]] = PeftModel.from_pretrained(m, body["lora_path"]).eval()
    return 200, {"status": "ok"}


class H(BaseHTTPRequestHandler):
    def reply(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        if self.path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        with lock:
            if self.path == "/v1/completions":
                return self.reply(*completions(body))
            if self.path == "/tokenize":
                ids = tok(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
                return self.reply(200, {"tokens": ids, "count": len(ids), "max_model_len": cfg.get("max_position_embeddings", 2048)})
            if self.path == "/extras/tokenize":
                return self.reply(200, {"tokens": encode(body["input"])})
            if self.path == "/v1/load_lora_adapter":
                return self.reply(*load_lora(body))
        self.reply(404, {"error": "not found"})

    def log_message(self, *a):
        pass


print(f"serving {args.model} as {args.name!r} on 127.0.0.1:{args.port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", args.port), H).serve_forever()
