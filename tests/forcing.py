"""Forced output: real ``generate`` made to emit a chosen text, whatever random weights say."""

import torch
from transformers import LogitsProcessor

from kosmos_demo.grounding import split_markup

CONTINUATION = (
    "<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> warming himself by"
    "<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)


class ForceTokens(LogitsProcessor):
    """Makes real generation emit ``ids`` (then EOS), whatever the random weights say."""

    def __init__(self, ids, eos_id, prompt_length):
        self.ids, self.eos_id, self.prompt_length = list(ids), eos_id, prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        target = self.ids[step] if step < len(self.ids) else self.eos_id
        forced = torch.full_like(scores, -float("inf"))
        forced[:, target] = 0.0
        return forced


def token_ids(tokenizer, text):
    """Ids as the model would emit them: text right after a tag gets no word-start marker."""
    ids = []
    for kind, piece in split_markup(text):
        if kind != "text":
            ids.append(tokenizer.convert_tokens_to_ids(piece))
            continue
        tokens = tokenizer.tokenize(piece)
        if not piece.startswith(" ") and tokens and tokens[0].startswith("▁"):
            tokens = tokens[1:] if tokens[0] == "▁" else [tokens[0][1:]] + tokens[1:]
        ids.extend(tokenizer.convert_tokens_to_ids(tokens))
    return ids


def forced_describe(engine, image, request, text=CONTINUATION):
    tokenizer = engine.processor.tokenizer
    ids = token_ids(tokenizer, text)
    prompt_length = engine.preprocess([image], [request]).inputs["input_ids"].shape[1]
    return engine.describe(image, request, logits_processors=[ForceTokens(ids, tokenizer.eos_token_id, prompt_length)]), ids
