"""Run by test_hf_ddp.py under torchrun (2 processes, gloo on CPU): an HF Trainer with MonitorTrainerCallback.

Writes OUT/final_<rank>.json: global_step, should_stop, the rank's captured batch sizes and rank 0's history.
"""
import gc
import json
import os
import sys
import weakref

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
                   "history": history, "wrapped": type(trainer.model_wrapped).__name__}, f)
    return weakref.ref(trainer.model_wrapped)


if __name__ == "__main__":
    ddp_model = main()
    # The HF Trainer leaves the process group it created alive. A gloo group still alive at interpreter exit can
    # abort the process ("terminate called without an active exception", pytorch/pytorch#190489), so a script that
    # ends a DDP run, as this one does, destroys it -- AFTER the DDP model is gone. The model's Reducer holds the
    # group and is freed with the GIL held: freed after destroy_process_group, its last reference joins gloo's
    # threads while one of them waits for the GIL to free a finished collective's tensors, and the process hangs
    # at exit (pytorch/pytorch#56297; seen once in ~40 runs). Freed while the group is still registered, it only
    # drops a reference; destroy_process_group then ends the group with the GIL released. Lightning's order too.
    gc.collect()
    assert ddp_model() is None, "the DDP model outlived the Trainer: its Reducer would end the process group"
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
