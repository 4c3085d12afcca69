"""Writes tests/fixtures/tiny_bert/: a small BERT (2 layers, hidden 16, 2 heads, seeded
random weights) with a WordPiece tokenizer of 60 tokens, and expected.json with what
transformers and Captum compute on three sentences padded to 12 tokens:

* the mean-pooled sentence embeddings (sentence-transformers' pooling),
* the attention probabilities of layer 1,
* the logits of a linear head (head.safetensors) on the sentence embedding,
* Captum's LayerIntegratedGradients on model.embeddings (n_steps = 50, Gauss-Legendre),
  baseline [CLS] [PAD]... [SEP] with the input's attention mask, summed over the
  embedding: for embedding dimension 3 of sentence 0, and for the cosine similarity of
  sentence 0 with sentence 1.

The Rust tests (tests/text.rs) need no download. Regenerate with torch, transformers,
tokenizers and captum installed (e.g. the venv of tools/captum_baseline.py):
    python tools/make_tiny_bert.py
"""
import json
import os

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel

OUT = os.path.join("tests", "fixtures", "tiny_bert")
os.makedirs(OUT, exist_ok=True)
specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
words = ["a", "the", "man", "woman", "dog", "cat", "is", "are", "plays", "playing", "guitar", "piano",
         "music", "on", "in", "park", "stage", "market", "stock", "fell", "today", "sharply", "runs",
         "happy", "sad", "very", "good", "bad", "movie", "film", "loved", "hated", "it", "this", ".", ","]
pieces = ["##s", "##ing", "##ed", "##ly", "##er", "un", "##believ", "##able", "##ist", "##ar",
          "##ists", "##y", "##es", "##ful", "##ness", "##ion", "##al", "##ic", "##e"]
vocab = {t: i for i, t in enumerate(specials + words + pieces)}
tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
tok.save(os.path.join(OUT, "tokenizer.json"))

torch.manual_seed(0)
config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu",
                    layer_norm_eps=1e-12, initializer_range=0.5, pad_token_id=0)
config._attn_implementation = "eager"
model = BertModel(config, add_pooling_layer=False).eval()
with open(os.path.join(OUT, "config.json"), "w") as f:
    json.dump({**config.to_diff_dict(), "model_type": "bert", "architectures": ["BertModel"]}, f, indent=1)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(OUT, "model.safetensors"))

S = 12
sentences = ["A man is playing a guitar.", "The woman plays piano on stage.", "Stock markets fell sharply today."]
ids = []
for s in sentences:
    e = tok.encode(s).ids
    ids.append(e + [0] * (S - len(e)))
ids = torch.tensor(ids)
mask = (ids != 0).long()


def embed(input_ids, attention_mask):
    h = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    m = attention_mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


with torch.no_grad():
    emb = embed(ids, mask)
    attn = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[1]
special = {vocab["[CLS]"], vocab["[SEP]"], 0}
base = torch.tensor([[t if t in special else 0 for t in row] for row in ids.tolist()])
lig = LayerIntegratedGradients(embed, model.embeddings)
dim_attr = lig.attribute(ids[0:1], baselines=base[0:1], additional_forward_args=(mask[0:1],), target=3,
                         n_steps=50, method="gausslegendre").sum(-1)


def cosine(input_ids, attention_mask):
    e = embed(input_ids, attention_mask)
    return torch.nn.functional.cosine_similarity(e, emb[1:2].expand_as(e), dim=1).unsqueeze(1)


lig2 = LayerIntegratedGradients(cosine, model.embeddings)
sim_attr = lig2.attribute(ids[0:1], baselines=base[0:1], additional_forward_args=(mask[0:1],), target=0,
                          n_steps=50, method="gausslegendre").sum(-1)
# A linear head on the sentence embedding (LOAD MODEL … HEAD 'head.safetensors').
g = torch.Generator().manual_seed(1)
head_w, head_b = torch.randn(3, 16, generator=g), torch.randn(3, generator=g)
save_file({"classifier.weight": head_w, "classifier.bias": head_b}, os.path.join(OUT, "head.safetensors"))


def classify(input_ids, attention_mask):
    return embed(input_ids, attention_mask) @ head_w.T + head_b


with torch.no_grad():
    head_logits = classify(ids, mask)
head_attr = LayerIntegratedGradients(classify, model.embeddings).attribute(
    ids[0:1], baselines=base[0:1], additional_forward_args=(mask[0:1],), target=1, n_steps=50,
    method="gausslegendre").sum(-1)
expected = {
    "head_logits": head_logits.tolist(),
    "lig_head_class1_sentence0": head_attr[0].tolist(),
    "sentences": sentences,
    "max_tokens": S,
    "ids": ids.tolist(),
    "tokens": [tok.encode(s).tokens for s in sentences],
    "embeddings": emb.tolist(),
    "attention_layer1": attn.tolist(),
    "lig_dim3_sentence0": dim_attr[0].tolist(),
    "lig_similarity_0_1": sim_attr[0].tolist(),
    "similarity_0_1": float(torch.nn.functional.cosine_similarity(emb[0:1], emb[1:2]).item()),
    "versions": {"torch": torch.__version__, "captum": __import__("captum").__version__,
                 "transformers": __import__("transformers").__version__},
}
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f)
print("wrote", OUT, [len(t) for t in expected["tokens"]])
