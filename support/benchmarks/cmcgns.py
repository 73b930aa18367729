"""Training speed of CM-CGNS against the original's loss formulation (per-sample Python loops).

``python -m support.benchmarks.cmcgns [--profile quick] [--batch 64] [--updates 6] [--out result.json]``

Both sides train the same network (:class:`support.cmcgns.model.CMCGNS`, the ``cmcgns`` ablation
in stage 2: every loss) on the same batch, with Adam; only the loss formulation differs.
- Ours: :meth:`CMCGNS.forward`, batched: sentence means by one matrix product, one attention
  pooling over padded sentences, cross-modal attention over the batch at once, the
  cluster-guided report loss with one extra logit per sentence.
- Theirs: the original's structure, reimplemented on our modules: sentence embeddings gathered
  per report and per sentence in Python loops, the report pooled per report, cross-modal
  attention and SimSiam per report, and the report loss with every sentence's hard negative as
  a column of every row, weighted by a matrix built as a Python list of lists.
The two alternate, each measurement repeated and the median kept, so load from other processes
hits both alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPORT = ("The heart size is normal. There is a small left pleural effusion. No pneumothorax is seen. "
          "The lungs are otherwise clear. A right internal jugular line ends in the low SVC. "
          "No focal consolidation. Osseous structures are unremarkable.")


def batch_of(config, size: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """A batch of ``size`` seeded images and seven-sentence reports (a MIMIC report's length),
    and the tokenizer's vocabulary size."""
    from support.cmcgns.data import collate_pairs
    from support.cmcgns.text import encode_report, report_sentences
    from support.core.tokenizer import train_wordpiece

    sentences, _ = report_sentences(REPORT, "")
    tokenizer = train_wordpiece(sentences, config.text.vocab_size)
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(size):
        ids, index = encode_report(tokenizer, sentences[: 4 + i % 4], config.text.max_tokens)
        items.append({"image": torch.rand(1, config.image.size, config.image.size, generator=g), "input_ids": ids,
                      "sentence_index": index})
    return collate_pairs(items), len(tokenizer)


def looped_losses(net, batch: dict[str, torch.Tensor], hard_negative_weight: float = 3.0) -> torch.Tensor:
    """The original's formulation of the same losses (module docstring)."""
    from support.cmcgns.losses import global_infonce, reconstruction_l1

    image = batch["image"]
    image_global, patches, grid = net.encode_image(image)
    hidden = net.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    tokens = net.local_text(hidden)
    stacks = []
    for b in range(tokens.shape[0]):                                  # per report, per sentence
        index = batch["sentence_index"][b]
        stacks.append(torch.stack([tokens[b][index == s].mean(0) for s in range(int(index.max()) + 1)]))
    report = torch.cat([net.global_text(net.sentence_pool(s[None])) for s in stacks])
    loss = global_infonce(image_global, report, net.global_scale())
    image_loss, attended, text_to_image = 0.0, [], []
    for b, sentences in enumerate(stacks):                            # per report
        present = torch.ones(1, len(sentences), dtype=torch.bool)
        a, t = net.cross(sentences[None], present, patches[b][None])
        p, q = net.predictor(patches[b]), net.predictor(t[0])
        image_loss = image_loss - (F.cosine_similarity(p, t[0].detach(), dim=-1).mean()
                                   + F.cosine_similarity(q, patches[b].detach(), dim=-1).mean()) / 2
        attended.append(a[0])
        text_to_image.append(t)
    z1, z2 = F.normalize(torch.cat(stacks), dim=-1), F.normalize(torch.cat(attended), dim=-1)
    net.clusters.update(z2)
    centroids = net.clusters.current()
    hard = centroids[(z1 @ centroids.t()).topk(2, dim=-1).indices[:, 1]]
    logits = torch.cat([z1 @ z2.t(), z1 @ hard.t()], dim=1)           # every hard negative, every row
    n = logits.shape[0]
    weights = torch.tensor([[1.0] * n + [0.0] * i + [hard_negative_weight] + [0.0] * (n - i - 1) for i in range(n)])
    report_loss = F.cross_entropy(logits * weights, torch.arange(n))
    masked = torch.rand(patches.shape[:2]) < net.config.loss.mask_ratio
    rebuilt = net.decoder(patches, torch.cat(text_to_image), masked, grid)
    mir = reconstruction_l1(rebuilt, F.interpolate(image, size=rebuilt.shape[-2:]), net.config.loss.mir_weight)
    return loss + image_loss / len(stacks) + report_loss + mir


def rate(step, batch_size: int, updates: int, warmup: int) -> float:
    times = []
    for i in range(warmup + updates):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    return batch_size * updates / sum(times[warmup:])


def training_steps(profile: str, batch_size: int):
    """``(ours, theirs, config, batch)``: one Adam update of the same network on the same batch,
    with our batched losses and with the original's looped formulation."""
    from support.cmcgns.config import cmcgns_config
    from support.cmcgns.model import CMCGNS

    config = cmcgns_config(profile, {"loss": {"method": "cmcgns"}})
    batch, vocab = batch_of(config, batch_size)
    torch.manual_seed(0)
    net = CMCGNS(config, vocab).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)

    def ours():
        loss, _ = net(batch, generator, stage=2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def theirs():
        looped_losses(net, batch).backward()
        optimizer.step()
        optimizer.zero_grad()

    return ours, theirs, config, batch


SUITE_SIZES = {"toy": dict(profile="test", batch=8, updates=2), "default": dict(profile="quick", batch=64, updates=4),
               "gpu": dict(profile="quick", batch=64, updates=4)}


def suite_cases(size: str, device) -> list:
    """The suite's CM-CGNS row: training updates, batched losses against the original's loops (CPU:
    the looped formulation builds its tensors on the CPU)."""
    from support.benchmarks.runner import Case, Work

    s = SUITE_SIZES[size]
    ours, theirs, config, _ = training_steps(s["profile"], s["batch"])

    def run_updates(step):
        def call():
            for _ in range(s["updates"]):
                step()
            return Work(s["batch"] * s["updates"])
        return call

    return [Case("CM-CGNS", f"train step, every loss, {config.image.size} px", "images/s", run_updates(ours),
                 run_updates(theirs), "original loss formulation (per-sample Python loops)", batch=s["batch"],
                 warm_ours=ours, warm_peer=theirs, notes="on the CPU: the looped formulation builds CPU tensors")]


def run(profile: str = "quick", batch_size: int = 64, updates: int = 6, warmup: int = 2, repeats: int = 3,
        threads: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    ours, theirs, config, batch = training_steps(profile, batch_size)
    ours_runs, their_runs = [], []
    for _ in range(repeats):
        ours_runs.append(rate(ours, batch_size, updates, warmup))
        their_runs.append(rate(theirs, batch_size, updates, warmup))
    result = {"profile": profile, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "batch_size": batch_size, "image_size": config.image.size,
              "sentences": int((batch["sentence_index"].amax(1) + 1).sum()), "updates_timed": updates,
              "repeats": repeats, "ours_images_per_s": statistics.median(ours_runs),
              "original_loops_images_per_s": statistics.median(their_runs), "ours_runs": ours_runs,
              "original_loops_runs": their_runs}
    result["ratio_ours_over_original"] = result["ours_images_per_s"] / result["original_loops_images_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.benchmarks.cmcgns", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="CM-CGNS profile: test, quick, study or full (sizes)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--updates", type=int, default=6, help="timed updates per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements of each (median kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.profile, args.batch, args.updates, args.warmup, args.repeats, args.threads)
    print(f"CM-CGNS training step (every loss), batch {result['batch_size']} at {result['image_size']} px, "
          f"{result['sentences']} sentences, {result['threads']} threads, median of {result['repeats']}:")
    print(f"  ours (batched losses)        {result['ours_images_per_s']:8.1f} images/s")
    print(f"  the original's loops         {result['original_loops_images_per_s']:8.1f} images/s")
    print(f"  ratio ours / original        {result['ratio_ours_over_original']:8.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
