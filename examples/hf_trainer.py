"""spherewatch in a Hugging Face ``Trainer``: a tiny BERT (built from a config, nothing downloaded) on generated
token data; the pooler's embeddings are logged into the Trainer's own TensorBoard event file.

    python examples/hf_trainer.py                     # 200 steps, output in runs/hf_trainer
    python examples/hf_trainer.py --max-steps 10      # a quick check
    tensorboard --logdir runs/hf_trainer
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from spherewatch.integrations.hf import MonitorTrainerCallback  # noqa: E402


class TokenData(torch.utils.data.Dataset):
    """Random token sequences; the label says whether the first token is in the upper half of the vocabulary."""

    def __init__(self, n: int = 512, length: int = 16, vocab: int = 100, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] >= vocab // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def main(argv=None) -> MonitorTrainerCallback:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--output-dir", default="runs/hf_trainer")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    model = BertForSequenceClassification(config)

    # --- spherewatch: one callback, watching the pooler output; logs go to the Trainer's TensorBoard run
    monitor = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=20)
    training_args = TrainingArguments(output_dir=args.output_dir, max_steps=args.max_steps, report_to=["tensorboard"],
                                      per_device_train_batch_size=32, logging_steps=10, save_strategy="no",
                                      use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=training_args, train_dataset=TokenData(), callbacks=[monitor]).train()

    for key, value in sorted(monitor.monitor.last_values.items()):
        print(f"{key} = {value:.4f}")
    return monitor


if __name__ == "__main__":
    main()
