"""sentence-transformers fine-tunes on generated sentence pairs, with a tokenizer trained locally and a tiny BERT
built from a ``BertConfig`` (nothing downloaded), monitored through the HF adapter.

Scenarios (``SENTENCE_SCENARIOS``): healthy ``MultipleNegativesRankingLoss``; collapse through
``CosineSimilarityLoss`` on random pairs with target 1 (from the start, or switched in at ``switch``); a learning
rate far too high (switched in). A mean-pooled random transformer starts anisotropic (mean cosine ~0.9) and MNRL
spreads it out: the healthy runs test that this start is never alerted.

The onset is measured without the monitor on a fixed probe of 128 (anchor, positive) pairs embedded every
``probe_every`` steps: retrieval accuracy (anchor -> its positive among the 128) and the total variance
``1 - ||mean||^2`` of the normalised anchor embeddings. The collapse is *real* at the first probe (after the switch;
for a run that collapses from the start, after the first probe) where the retrieval accuracy has lost a third of
its margin over chance or the total variance has fallen below 0.7 of its reference (the last three probes before
the switch; from the start: the largest value reached by then).
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

__all__ = ["SENTENCE_SCENARIOS", "SentenceScenario", "build_model", "make_pairs", "run_sentence_scenario"]


@dataclasses.dataclass(frozen=True)
class SentenceScenario:
    collapses: bool
    loss: str = "mnrl"  # mnrl | random_pairs (CosineSimilarityLoss, target 1)
    after: Optional[str] = None  # loss from the switch on
    lr_scale: float = 1.0  # learning-rate factor from the switch on
    what: str = ""


SENTENCE_SCENARIOS: Dict[str, SentenceScenario] = {
    "st_mnrl": SentenceScenario(False, what="healthy MultipleNegativesRankingLoss"),
    "st_random_pairs": SentenceScenario(True, loss="random_pairs",
                                        what="CosineSimilarityLoss(target 1) on random pairs from the start"),
    "st_mnrl_then_random_pairs": SentenceScenario(True, after="random_pairs",
                                                  what="MNRL, then CosineSimilarityLoss on random pairs"),
    "st_mnrl_high_lr": SentenceScenario(True, lr_scale=300.0, what="MNRL, learning rate x300"),
}

TOPICS = 12
WORDS_PER_TOPIC = 10
ENTITIES = 300


def _vocab() -> tuple:
    topic_words = [[f"t{t}w{i}" for i in range(WORDS_PER_TOPIC)] for t in range(TOPICS)]
    fillers = ["the", "a", "of", "and", "with", "near", "about", "for", "on", "in", "is", "was"]
    entities = [f"e{i}" for i in range(ENTITIES)]
    return topic_words, fillers, entities


def make_pairs(n: int, seed: int) -> List[tuple]:
    """``n`` (anchor, positive) sentence pairs: each pair shares a topic and two entity words, in new wording."""
    rng = random.Random(seed)
    topic_words, fillers, entities = _vocab()

    def sentence(t: int, ents: List[str]) -> str:
        words = rng.sample(topic_words[t], 3) + rng.sample(fillers, 3) + ents
        rng.shuffle(words)
        return " ".join(words)

    pairs = []
    for _ in range(n):
        t = rng.randrange(TOPICS)
        ents = rng.sample(entities, 2)
        pairs.append((sentence(t, ents), sentence(t, ents)))
    return pairs


def build_model(root: str, seed: int):
    """A ``SentenceTransformer([Transformer(tiny BERT), Pooling(mean)])`` saved to and loaded from ``root``: the
    WordLevel tokenizer is trained here on the generated corpus, the BERT is built from a config."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    try:
        from sentence_transformers.base.modules import Transformer
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers.models import Transformer

    path = os.path.join(root, f"tiny-bert-{seed}")
    if not os.path.exists(os.path.join(path, "config.json")):
        topic_words, fillers, entities = _vocab()
        corpus = [" ".join(w) for w in topic_words] + [" ".join(fillers), " ".join(entities)]
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                      ("[SEP]", tok.token_to_id("[SEP]"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=16)
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=48, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=96, max_position_embeddings=32,
                            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        BertModel(config).save_pretrained(path)
        fast.save_pretrained(path)
    transformer = Transformer(path, max_seq_length=16)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    torch.manual_seed(seed)
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


class _SwitchLoss(torch.nn.Module):
    """MNRL (or random-pair cosine loss) that can switch to another loss at a step; labels are ignored."""

    def __init__(self, model, first: str, after: Optional[str], switch: int, clock: Dict[str, int]) -> None:
        super().__init__()
        from sentence_transformers.sentence_transformer import losses

        self.model = model
        self.mnrl = losses.MultipleNegativesRankingLoss(model)
        self.cosine = losses.CosineSimilarityLoss(model)
        self.first, self.after, self.switch, self.clock = first, after, switch, clock

    def forward(self, features, labels):
        kind = self.after if (self.after is not None and self.clock["step"] >= self.switch) else self.first
        if kind == "mnrl":
            return self.mnrl(features, labels)
        anchor, positive = features[0], features[1]
        shuffled = {k: (torch.roll(v, 1, dims=0) if isinstance(v, torch.Tensor) else v) for k, v in positive.items()}
        target = torch.ones(anchor["input_ids"].shape[0], device=anchor["input_ids"].device)
        return self.cosine([anchor, shuffled], target)


@dataclasses.dataclass
class SentenceRun:
    name: str
    seed: int
    switch: Optional[int]
    onset: Optional[int]
    probe: List[tuple]  # (step, retrieval accuracy, total variance)


def run_sentence_scenario(name: str, callback, root: str, *, seed: int = 0, steps: int = 300, switch: int = 150,
                          probe_every: int = 10, lr: float = 5e-4, batch: int = 32) -> SentenceRun:
    """Train ``name`` with ``SentenceTransformerTrainer`` and the given ``MonitorTrainerCallback``."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    sc = SENTENCE_SCENARIOS[name]
    model = build_model(root, seed)
    pairs = make_pairs(2000, seed)
    data = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    probe_pairs = make_pairs(128, 10_000 + seed)
    clock = {"step": 0}
    history: List[tuple] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock["step"] = state.global_step + 1
            if sc.lr_scale != 1.0 and clock["step"] == switch and kw.get("lr_scheduler") is not None:
                sched = kw["lr_scheduler"]
                sched.base_lrs = [b * sc.lr_scale for b in sched.base_lrs]
                for g in kw["optimizer"].param_groups:
                    g["lr"] = g["lr"] * sc.lr_scale

        def on_step_end(self, args, state, control, **kw):
            s = state.global_step
            if s % probe_every == 0 or s == 1:
                history.append((s, *_probe(model, probe_pairs)))

    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(root, f"out-{name}-{seed}"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=seed, dataloader_drop_last=True,
    )
    loss = _SwitchLoss(model, sc.loss, sc.after, switch, clock)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss,
                                         callbacks=[Clock(), callback])
    trainer.train()
    switched = sc.after is not None or sc.lr_scale != 1.0
    onset = _onset(history, switch if switched else None) if sc.collapses else None
    return SentenceRun(name, seed, (switch if switched else 0) if sc.collapses else None, onset, history)


@torch.no_grad()
def _probe(model, pairs) -> tuple:
    was = model.training
    model.eval()
    a = model.encode([p[0] for p in pairs], convert_to_tensor=True, batch_size=128, show_progress_bar=False)
    b = model.encode([p[1] for p in pairs], convert_to_tensor=True, batch_size=128, show_progress_bar=False)
    model.train(was)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return 1.0 / len(pairs), 0.0
    an, bn = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    acc = ((an @ bn.T).argmax(dim=1) == torch.arange(len(pairs))).float().mean().item()
    spread = 1.0 - an.mean(0).pow(2).sum().item()
    return acc, spread


def _onset(history: List[tuple], switch: Optional[int]) -> Optional[int]:
    chance = 1.0 / 128
    for i, (s, acc, spread) in enumerate(history):
        if switch is not None:
            before = [h for h in history if h[0] < switch][-3:]
            if s < switch or not before:
                continue
            a0 = sum(h[1] for h in before) / len(before)
            v0 = sum(h[2] for h in before) / len(before)
        else:
            if i == 0:
                continue
            a0 = max(h[1] for h in history[: i + 1])
            v0 = max(h[2] for h in history[: i + 1])
        if acc < a0 - (a0 - chance) / 3 or spread < 0.7 * v0:
            return s
    return None
