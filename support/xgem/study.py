"""Notebook 03's measurements: each stage's own check, then every direction on held-out studies
(:mod:`support.xgem.evaluate`), and XGeM's two claims as ablations: Multi-Prompt vs single-prompt
training, and joint vs independent generation of two outputs.

Every output is compared with the study its conditions came from: generated images through the
reference classifier of their view (trained on the run's real images of that view, cached as 06
caches its own), generated reports through the labeler, both against the study's labels. Beside
each agreement: the same outputs against *other* studies' truth (an output that ignores its
conditions scores this), and the study's real image or report read by the same judge (the ceiling).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from support.xgem.config import XGeMConfig, xgem_config
from support.xgem.data import Studies
from support.xgem.evaluate import (FINDINGS, STATED_ABOVE, auroc_over, finding_agreement, finding_auroc, frechet,
                                   frechet_of, image_scores, pair_consistency, paired_difference, pooled_agreement,
                                   report_findings, report_scores, study_matches, too_few, truth_matrix)
from support.xgem.generate import DIRECTIONS, generate, parse_direction

LOCAL = {"vae_path": ("image_vae", "vae_path"), "clip_path": ("contrastive", "clip_path"),
         "bert_path": ("report_vae", "bert_path"), "gpt2_path": ("report_vae", "gpt2_path")}
VIEWS = {"frontal": ("PA", "AP"), "lateral": ("LATERAL", "LL")}


# ------------------------------------------------------------------------------ configuration
def notebook_config(profile: str, seed: int = 0, stage_steps: Mapping[str, int] | None = None,
                    local: Mapping[str, str] | None = None, overrides: Mapping | None = None,
                    allow_stand_ins: bool = False) -> tuple[XGeMConfig, dict]:
    """03's config and the settings that rebuild it (written to ``xgem.json`` for 04 and the command line):
    the profile, then ``overrides`` (nested), the local weights (``vae_path``, ``clip_path``,
    ``bert_path``, ``gpt2_path``), each stage's updates (``stage_steps``) and the seed of every loop.
    ``full`` refuses to stand small models in for the published ones unless ``allow_stand_ins``."""
    from support.params import ParameterError

    overrides = json.loads(json.dumps(dict(overrides or {})))
    for name, path in (local or {}).items():
        if name not in LOCAL:
            raise ParameterError(f"03_xgem: unknown local weights {name!r}; expected some of {list(LOCAL)}")
        if path:
            part, field = LOCAL[name]
            overrides.setdefault(part, {})[field] = str(path)
    missing = [n for n, (part, field) in LOCAL.items() if not overrides.get(part, {}).get(field)]
    if profile == "full" and missing and not allow_stand_ins:
        raise ParameterError(f"03_xgem: the full profile is the published XGeM, whose {missing} are local folders "
                             "(nothing is downloaded): set them, or allow_stand_ins to train small ones in their place")
    loops = overrides.setdefault("loops", {})
    for stage in ("image_vae", "report_vae", "contrastive", "frontal", "lateral", "report", "joint"):
        loops.setdefault(stage, {})["seed"] = seed
    unknown = [s for s in (stage_steps or {}) if s not in loops]
    if unknown:
        raise ParameterError(f"03_xgem stage_steps: unknown stage(s) {unknown}; expected some of {list(loops)}")
    for stage, steps in (stage_steps or {}).items():
        if steps:
            loops[stage].update(max_steps=int(steps), epochs=None)
    config = xgem_config(profile, overrides, source="03_xgem parameters")
    return config, {"profile": profile, "overrides": overrides}


def single_prompt(config: XGeMConfig) -> XGeMConfig:
    """The ablation: image models always conditioned on the report, the report model on the frontal."""
    return dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, multi_prompt=False))


# ------------------------------------------------------------------------------ stages
def stage_table(histories: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per stage: updates, first and last logged loss, throughput, what it trained on."""
    rows = []
    for stage, h in histories.items():
        losses = h.get("loss") or [math.nan]
        rows.append({"stage": stage, "updates": (h.get("step") or [0])[-1], "loss start": losses[0],
                     "loss end": losses[-1], "items/s": float(np.nanmedian(h["images_per_s"])) if h.get(
                         "images_per_s") else math.nan,
                     "studies": h.get("n_studies", h.get("n_reports", math.nan))})
    return pd.DataFrame(rows)


def held_out(records: pd.DataFrame, size: int) -> Studies:
    """The studies XGeM never trained on: the test split, or validate when there is no test split."""
    for split in ("test", "validate"):
        chosen = records[records["split"] == split]
        if len(chosen):
            return Studies(chosen, size)
    raise ValueError("XGeM: the records have neither a test nor a validate split to measure on")


# ------------------------------------------------------------------------------ directions
def _eligible(studies: Studies, inputs: Sequence[str], outputs: Sequence[str]) -> list[int]:
    """Studies holding every input, and every output's truth (a report output needs the study's report)."""
    needed = set(inputs) | ({"report"} if "report" in outputs else set())
    ok = np.ones(len(studies), dtype=bool)
    if "lateral" in needed:
        ok &= studies.has_lateral.to_numpy()
    if "report" in needed:
        ok &= studies.has_report.to_numpy()
    return np.nonzero(ok)[0].tolist()


def _given(studies: Studies, rows: Sequence[int], inputs: Sequence[str]) -> dict[str, Any]:
    items = [studies[i] for i in rows]
    return {m: ([it["report"] for it in items] if m == "report" else torch.stack([it[m] for it in items]))
            for m in inputs}


def _unit(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) / 2).clamp(0, 1)


def generate_for(models, studies: Studies, direction: str, n: int, batch_size: int = 8, seed: int = 0,
                 joint: bool = True) -> tuple[list[int], dict[str, Any]]:
    """Up to ``n`` held-out studies that can feed ``direction`` and its outputs for them (seeded per batch)."""
    inputs, outputs = parse_direction(direction)
    rows = _eligible(studies, inputs, outputs)[:n]
    collected: dict[str, list] = {m: [] for m in outputs}
    for start in range(0, len(rows), batch_size):
        out = generate(models, direction, _given(studies, rows[start:start + batch_size], inputs),
                       seed=seed + start, joint=joint)
        for m in outputs:
            collected[m] += list(out[m]) if m == "report" else [out[m]]
    result = {m: (v if m == "report" else (torch.cat(v) if v else torch.empty(0))) for m, v in collected.items()}
    return rows, result


def stated_by(scores: np.ndarray) -> np.ndarray:
    """Readings (Judges.scores) to stated findings, at image_findings' threshold."""
    return scores > STATED_ABOVE


@dataclasses.dataclass
class Judges:
    """What reads an output: the reference encoder of each view, and the real images' features."""

    references: dict[str, Any]                    # "frontal"/"lateral" -> ReferenceEncoder
    real_features: dict[str, np.ndarray]

    def stated(self, modality: str, output) -> np.ndarray:
        """(N, F) findings an output states: a probability above 0.5, or the labeler's 1."""
        return stated_by(self.scores(modality, output))

    def scores(self, modality: str, output) -> np.ndarray:
        """(N, F) readings to rank by: a view's classifier probabilities, a report's stated findings as 0/1."""
        if modality == "report":
            return report_findings(output).astype(np.float64)
        ref = self.references[modality]
        return image_scores(ref.predict_proba(_unit(output)).numpy(), ref.label_names)

    def features(self, view: str, images: torch.Tensor, space: str | None = None) -> np.ndarray:
        return self.references[space or view].embed(_unit(images)).numpy()


def make_judges(references: Mapping[str, Any], studies: Studies) -> Judges:
    """The judges, with each view's real held-out images embedded once."""
    real = {}
    for view in ("frontal", "lateral"):
        rows = [i for i in range(len(studies)) if view == "frontal" or studies.has_lateral.iat[i]]
        images = torch.stack([studies[i][view] for i in rows]) if rows else torch.empty(0, 1, 1, 1)
        real[view] = references[view].embed(_unit(images)).numpy() if rows else np.empty((0, 1))
    return Judges(dict(references), real)


def score_direction(direction: str, rows: Sequence[int], outputs: Mapping[str, Any], studies: Studies,
                    judges: Judges, per_study: dict | None = None) -> list[dict]:
    """One row per output of ``direction``: Fréchet distance (images), BLEU/ROUGE-L (reports), and
    finding agreement with the conditioning studies' truth. ``per_study``, when given, receives for
    each output the per-study counts (matched and unmatched truth) and image features that paired
    bootstrap intervals resample."""
    truth = truth_matrix(studies.records.iloc[list(rows)])
    result = []
    for m, out in outputs.items():
        row = {"direction": direction, "output": m, "studies": len(rows)}
        features = judges.features(m, out) if m != "report" and len(rows) else None
        other = np.roll(truth, 1, axis=0)           # each output against another study's truth
        if len(rows):
            ranked = judges.scores(m, out)
            stated = stated_by(ranked)               # what Judges.stated reads, without a second pass
            agreement = finding_agreement(stated, truth)
            # the same outputs against other studies' truth (what an output unrelated to its study
            # scores), and the real image or report of each study read by the same judge (the ceiling)
            unmatched = finding_agreement(stated, other)
            real = [studies.records["report"].iat[i] for i in rows] if m == "report" else \
                torch.stack([studies[i][m] for i in rows])
            real_scores = judges.scores(m, real)
            ceiling = finding_agreement(stated_by(real_scores), truth)
            auroc = finding_auroc(ranked, truth)
            auroc_unmatched = finding_auroc(ranked, other)
            auroc_real = finding_auroc(real_scores, truth)
        else:
            agreement = unmatched = ceiling = {"agreement": math.nan, "f1": math.nan, "reason": too_few(0)}
            auroc = auroc_unmatched = auroc_real = {"auroc": math.nan, "findings": [], "reason": too_few(0)}
            stated = ranked = np.zeros((0, truth.shape[1]))
        if per_study is not None:
            per_study[m] = {"matches": study_matches(stated, truth), "unmatched": study_matches(stated, other),
                            "scores": ranked, "truth": truth, "other": other, "features": features}
        row.update({"agreement": agreement["agreement"], "agreement unmatched": unmatched["agreement"],
                    "agreement real": ceiling["agreement"], "f1": agreement["f1"], "f1 real": ceiling["f1"],
                    "auroc": auroc["auroc"], "auroc unmatched": auroc_unmatched["auroc"],
                    "auroc real": auroc_real["auroc"], "auroc findings": len(auroc["findings"])})
        if m == "report":
            scores = report_scores(out, studies.records["report"].iloc[list(rows)].tolist())
            row.update({k: scores[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")})
            reason = scores["reason"]
        else:
            fd = frechet(judges.real_features[m], features) if len(rows) else \
                {"fd": math.nan, "reason": too_few(0, "images")}
            row["fd"] = fd["fd"]
            reason = fd["reason"]
        row["note"] = "; ".join(dict.fromkeys(r for r in (agreement.get("reason"), reason, auroc["reason"]) if r))
        result.append(row)
    return result


def consistency(pair: tuple[str, str], outputs: Mapping[str, Any], judges: Judges) -> dict:
    """:func:`~support.xgem.evaluate.pair_consistency` of two outputs of the same studies; the
    feature similarity for two views in the frontal reference space, none for an image and a report."""
    a, b = pair
    stated = judges.stated(a, outputs[a]), judges.stated(b, outputs[b])
    n = len(stated[0])
    if "report" in pair:
        reason = too_few(n, "pairs")
        agreement = math.nan if reason else float((stated[0] == stated[1]).mean())
        return {"n": n, "agreement": agreement, "similarity": math.nan, "reason": reason or "image and report: "
                "no shared feature space"}
    return pair_consistency(stated[0], stated[1], judges.features(a, outputs[a], "frontal"),
                            judges.features(b, outputs[b], "frontal"))


def evaluate_directions(models, studies: Studies, judges: Judges, directions: Sequence[str] = DIRECTIONS,
                        n: int = 16, batch_size: int = 8, seed: int = 0, joint: bool = True,
                        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """(per-output scores, pair consistency, the outputs of each direction with their per-study
    scores) on up to ``n`` studies each."""
    from tqdm.auto import tqdm

    rows, pairs, examples = [], [], {}
    for direction in tqdm(list(directions), desc="directions", unit="direction", disable=None if progress else True):
        chosen, outputs = generate_for(models, studies, direction, n, batch_size, seed, joint)
        examples[direction] = {"rows": chosen, **outputs, "per_study": {}}
        rows += score_direction(direction, chosen, outputs, studies, judges, examples[direction]["per_study"])
        if len(outputs) == 2:
            pair = tuple(outputs)
            pairs.append({"direction": direction, "generation": "joint" if joint else "independent",
                          **consistency(pair, outputs, judges)})
            whole = [i for i in chosen if ("lateral" not in pair or studies.has_lateral.iat[i])
                     and ("report" not in pair or studies.has_report.iat[i])]
            if whole:                   # the same measure on the real studies: what consistency looks like
                real = {m: ([studies.records["report"].iat[i] for i in whole] if m == "report" else
                            torch.stack([studies[i][m] for i in whole])) for m in pair}
                pairs.append({"direction": direction, "generation": "real studies", **consistency(pair, real, judges)})
    return pd.DataFrame(rows), pd.DataFrame(pairs), examples


def ablation_table(multi: pd.DataFrame, single: pd.DataFrame) -> pd.DataFrame:
    """Multi-Prompt vs single-prompt training, output by output, on the same studies and seeds."""
    keys = ["direction", "output"]
    cols = [c for c in ("agreement", "agreement unmatched", "f1", "fd", "bleu4", "rougeL") if c in multi.columns]
    merged = multi[keys + cols].merge(single[keys + cols], on=keys, suffixes=(" multi", " single"))
    return merged


def _difference_row(direction: str, output: str, measure: str, result: dict) -> dict:
    return {"direction": direction, "output": output, "measure": measure, "studies": result["n"],
            "difference": result["difference"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
            "excludes 0": bool(result["ci_low"] > _ROUNDING or result["ci_high"] < -_ROUNDING),
            "note": result["reason"]}


_ROUNDING = 1e-9   # an interval this close to 0 is float rounding of two equal measures, not an effect


def _auroc_difference(scores_a, scores_b, truth_a, truth_b, n_boot: int, seed: int) -> dict:
    """Mean finding AUROC of (scores_a vs truth_a) minus (scores_b vs truth_b) over the same studies,
    on the findings ``truth_a`` can score, with a paired interval."""
    scorable = finding_auroc(scores_a, truth_a)
    if scorable["reason"]:
        return {"n": len(truth_a), "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "reason": scorable["reason"]}
    columns = [list(FINDINGS).index(f) for f in scorable["findings"]]
    return paired_difference(auroc_over(scores_a, truth_a, columns), auroc_over(scores_b, truth_b, columns),
                             len(truth_a), n_boot, seed)


def conditioning_effect(examples: Mapping[str, Mapping], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Does each output follow its conditions? Its reading scored against its own study's truth
    minus against another study's (the same outputs, so only the conditioning differs): the mean
    finding AUROC (ignoring the conditions gives 0) and the agreement, each with a paired 95 %
    bootstrap interval over studies. An interval above 0 is conditioning the judges can see."""
    rows = []
    for direction, ex in examples.items():
        for output, scored in ex.get("per_study", {}).items():
            auroc = _auroc_difference(scored["scores"], scored["scores"], scored["truth"], scored["other"], n_boot,
                                      seed)
            rows.append(_difference_row(direction, output, "auroc - unmatched", auroc))
            own, other = scored["matches"], scored["unmatched"]
            agreement = paired_difference(lambda i: pooled_agreement(own, i), lambda i: pooled_agreement(other, i),
                                          len(own), n_boot, seed)
            rows.append(_difference_row(direction, output, "agreement - unmatched", agreement))
    return pd.DataFrame(rows, columns=_DIFFERENCE_COLUMNS)


def ablation_differences(multi: Mapping[str, Mapping], single: Mapping[str, Mapping], real_features: Mapping,
                         n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Multi-Prompt minus single-prompt, direction by direction, on the same studies and seeds: mean
    finding AUROC and agreement (above 0: Multi-Prompt follows the conditions better) and, for images, the
    Fréchet distance to the real view (below 0: Multi-Prompt closer), each with a paired bootstrap
    interval over studies. ``multi``/``single``: the examples of :func:`evaluate_directions`."""
    rows = []
    for direction in multi:
        if direction not in single:
            continue
        for output, a in multi[direction].get("per_study", {}).items():
            b = single[direction].get("per_study", {}).get(output)
            if b is None:
                continue
            n = len(a["matches"])
            if len(b["matches"]) != n:
                raise ValueError(f"{direction} -> {output}: {n} studies multi-prompt, {len(b['matches'])} single: "
                                 "the ablation compares the same studies")
            auroc = _auroc_difference(a["scores"], b["scores"], a["truth"], b["truth"], n_boot, seed)
            rows.append(_difference_row(direction, output, "auroc", auroc))
            agreement = paired_difference(lambda i: pooled_agreement(a["matches"], i),
                                          lambda i: pooled_agreement(b["matches"], i), n, n_boot, seed)
            rows.append(_difference_row(direction, output, "agreement", agreement))
            if a["features"] is not None:
                fd = paired_difference(frechet_of(real_features[output], a["features"]),
                                       frechet_of(real_features[output], b["features"]), n, n_boot, seed)
                rows.append(_difference_row(direction, output, "fd", fd))
    return pd.DataFrame(rows, columns=_DIFFERENCE_COLUMNS)


_DIFFERENCE_COLUMNS = ["direction", "output", "measure", "studies", "difference", "ci_low", "ci_high", "excludes 0",
                       "note"]


def example_figure(examples: Mapping[str, Mapping], studies: Studies, directions: Sequence[str], per_row: int = 2):
    """For each direction: the conditioning inputs of a few studies beside the generated outputs."""
    import matplotlib.pyplot as plt

    directions = [d for d in directions if d in examples and examples[d]["rows"]]
    if not directions:
        return None
    fig, axes = plt.subplots(len(directions), 1, figsize=(9, 1.9 * len(directions)), squeeze=False)
    for ax, direction in zip(axes[:, 0], directions):
        inputs, outputs = parse_direction(direction)
        ex, tiles, texts = examples[direction], [], []
        for k, row in enumerate(ex["rows"][:per_row]):
            item = studies[row]
            for m in inputs + outputs:
                source = item if m in inputs else None
                if m == "report":
                    texts.append(("in " if source else "out ") + (item["report"] if source else ex[m][k])[:90])
                else:
                    tiles.append(_unit(item[m] if source else ex[m][k])[0].numpy())
        ax.imshow(np.concatenate(tiles, axis=1) if tiles else np.zeros((8, 8)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{direction}   " + " | ".join(texts)[:160], fontsize=7, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig
