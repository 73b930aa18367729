"""A dataset that fails on purpose, for the training loops' crash-and-resume and NaN-stop tests."""

import torch


class Sabotaged(torch.utils.data.Dataset):
    """Items of ``base``; after ``after`` training reads it raises (``mode="crash"``) or returns
    the item with its ``key`` tensor all NaN (``mode="nan"``). Read 1 is the trainer's check of
    item 0, before training starts."""

    def __init__(self, base, after: int, mode: str, key: str):
        self.base, self.after, self.mode, self.key, self.reads = base, after, mode, key, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.after + 1:
            if self.mode == "crash":
                raise RuntimeError("simulated crash")
            item = dict(self.base[i])
            item[self.key] = torch.full_like(item[self.key], float("nan"))
            return item
        return self.base[i]
