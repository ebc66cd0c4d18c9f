"""Run by test_hf_ddp.py under torchrun (2 processes, gloo on CPU): an HF Trainer with MonitorTrainerCallback.

Writes OUT/final_<rank>.json: global_step, should_stop, the rank's captured batch sizes and rank 0's history.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertModel, Trainer, TrainingArguments  # noqa: E402

from spherewatch.integrations.hf import MonitorTrainerCallback  # noqa: E402

OUT = sys.argv[1]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16))
        self.head = torch.nn.Linear(16, 2)

    def forward(self, input_ids, labels=None):
        pooled = self.bert(input_ids=input_ids).pooler_output
        logits = self.head(pooled)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (256, 8), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": (self.ids[i, 0] > 25).long()}


def main():
    torch.manual_seed(0)
    rule = {"kind": "threshold", "metric": "uniformity", "above": -100.0, "action": "stop"}  # fires at once
    cb = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=3, sample_first_step=False,
                                sinks=("memory",), rules=[rule], warn=False)
    args = TrainingArguments(output_dir=OUT, max_steps=20, per_device_train_batch_size=8, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, ddp_backend="gloo",
                             logging_strategy="no")
    trainer = Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb])
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    mon = cb.monitor
    mem = [s for s in mon.sinks if getattr(s, "name", "") == "memory"]
    history = {k: mem[0].history(k) for k in mem[0].keys()} if mem else {}
    with open(os.path.join(OUT, f"final_{rank}.json"), "w") as f:
        json.dump({"global_step": trainer.state.global_step, "should_stop": mon.should_stop,
                   "world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
                   "history": history}, f)
    # The HF Trainer leaves the process group it created alive. A gloo group still alive at interpreter exit can
    # abort the process ("terminate called without an active exception", pytorch/pytorch#190489), so a script that
    # ends a DDP run, as this one does, destroys it; Lightning does the same in an atexit hook.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
