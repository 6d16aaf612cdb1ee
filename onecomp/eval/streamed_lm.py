"""lm-eval's log-likelihood requests scored on a model read block by block.

lm-eval hands a task's requests over all at once, so they can run the way the
runtime streams everything else: the requests' tokens pass each block in turn
(one block present at a time), then the final norm and the head score only
the continuation's positions. Tokenization, truncation and the result of each
request are lm-eval's own (its HFLM class does the encoding; only the scoring
is replaced), so a task scores as it does on the whole model, up to float
rounding. Generation tasks are refused: they need the whole model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from onecomp.errors import OneCompError
from onecomp.models.adapters import ArchAdapter
from onecomp.runtime.forward import last_block_outputs, streamed_logits
from onecomp.runtime.skeleton import StreamedModel

F32 = 4
# Hidden states held at once (host memory): requests beyond it are scored in
# further passes over the blocks.
HIDDEN_BUDGET_BYTES = 1 << 30

Pair = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


def _chunks(order: list[int], lengths: list[int], batch_size: int, max_tokens: int) -> list[list[list[int]]]:
    """``order`` cut into batches of ``batch_size`` requests, grouped into passes
    whose padded tokens stay within ``max_tokens`` (a pass holds one batch at least)."""
    passes: list[list[list[int]]] = [[]]
    tokens = 0
    for s in range(0, len(order), batch_size):
        batch = order[s : s + batch_size]
        padded = len(batch) * max(lengths[i] for i in batch)
        if passes[-1] and tokens + padded > max_tokens:
            passes.append([])
            tokens = 0
        passes[-1].append(batch)
        tokens += padded
    return [p for p in passes if p]


def loglikelihoods(
    model: StreamedModel,
    adapter: ArchAdapter,
    pairs: list[Pair],
    max_length: int,
    batch_size: int,
    on_done: Callable[[int], None] | None = None,
    hidden_budget: int = HIDDEN_BUDGET_BYTES,
) -> list[tuple[float, bool]]:
    """(summed log-probability of the continuation, whether it is the greedy
    one) for every (context, continuation) pair, as lm-eval's HFLM computes
    them: the last ``max_length`` tokens before the final one are the input,
    right-padded within a batch (causal attention never sees the padding)."""
    inputs = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in pairs]
    lengths = [len(x) for x in inputs]
    order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0]) - len(pairs[i][1]), tuple(pairs[i][0] + pairs[i][1])))
    width = model.model.config.hidden_size * F32
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    for batches in _chunks(order, lengths, batch_size, max(hidden_budget // width, 1)):
        ids = []
        for batch in batches:
            t = torch.zeros(len(batch), max(lengths[i] for i in batch), dtype=torch.long)
            for r, i in enumerate(batch):
                t[r, : lengths[i]] = torch.tensor(inputs[i], dtype=torch.long)
            ids.append(t)
        final = last_block_outputs(model, adapter, ids, batch_size)
        for b, logits_of, hidden in streamed_logits(model, adapter, final.hidden):
            for r, i in enumerate(batches[b]):
                cont = pairs[i][1]
                span = hidden[r, lengths[i] - len(cont) : lengths[i]]
                with torch.no_grad():
                    logp = torch.log_softmax(logits_of(span).float(), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                greedy = bool((logp.argmax(dim=-1) == target).all())
                results[i] = (float(logp.gather(-1, target[:, None]).sum()), greedy)
            if on_done:
                on_done(len(batches[b]))
            final.hidden[b] = torch.empty(0)  # scored: its memory goes back
    return [r for r in results if r is not None]


def streamed_lm(model: StreamedModel, adapter: ArchAdapter, tokenizer: Any, batch_size: int) -> Any:
    """An lm-eval model (HFLM's tokenization, the streamed scoring above) over ``model``."""
    import lm_eval.models.huggingface as hf

    class StreamedHFLM(hf.HFLM):
        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None) -> list[tuple[float, bool]]:
            bar = hf.tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
            pairs = [(ctx, cont) for _, ctx, cont in requests]
            out = loglikelihoods(model, adapter, pairs, self.max_length, batch_size, bar.update)
            bar.close()
            for (request, _, _), answer in zip(requests, out):
                self.cache_hook.add_partial("loglikelihood", request, answer)
            return out

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            raise OneCompError("generation tasks are not supported on a model streamed block by block; score them on a pivot")

    return StreamedHFLM(pretrained=model.model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device), dtype=torch.float32)
