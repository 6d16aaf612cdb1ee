from __future__ import annotations

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Wikipedia is a free online encyclopedia written by volunteers.",
    "The history of the city began in the nineteenth century.",
    "It is one of the largest rivers in the world and the region.",
]


def small_tokenizer(bos: bool) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes) trained in milliseconds; ``bos`` adds '<s>' via a post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_SENTENCES * 5, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tok_bos() -> transformers.PreTrainedTokenizerFast:
    return small_tokenizer(bos=True)


@pytest.fixture(scope="session")
def tok_plain() -> transformers.PreTrainedTokenizerFast:
    return small_tokenizer(bos=False)
