"""The XGeM benchmark's plan and printout, without training (the benchmark is run by hand)."""

from support.benchmarks.xgem import bench_config, report, variants
from support.xgem.config import xgem_config
from support.xgem.train import STAGES


def test_every_stage_is_cut_to_the_timed_updates_and_logs_each():
    config = bench_config("quick", updates=3, warmup=2, cpu=True)
    for stage in STAGES:
        loop = getattr(config.loops, stage)
        assert (loop.max_steps, loop.log_every, loop.checkpoint_every, loop.cpu) == (5, 1, 5, True), stage
    quick = xgem_config("quick")                      # everything else is the profile's
    assert config.loops.contrastive.batch_size == quick.loops.contrastive.batch_size
    assert config.image_vae == quick.image_vae and config.unet == quick.unet


def test_peers_are_guidance_1_everywhere_and_independent_sampling_for_two_outputs():
    assert variants("F+L->T", 7.5) == {"measured": {"guidance": 7.5, "joint": True},
                                       "guidance 1": {"guidance": 1.0, "joint": True}}
    assert variants("T->F+L", 7.5)["independent"] == {"guidance": 7.5, "joint": False}


def test_the_printout_gives_each_figure_and_the_ratios():
    result = {"profile": "quick", "image_size": 64, "studies": 120, "device": "cpu", "threads": 1,
              "updates_timed": 6, "warmup": 2, "guidance": 7.5, "batch": 4, "steps": 20, "report_max_tokens": 96,
              "repeats": 3,
              "training": {"image_vae": {"batch": 16, "rate": 40.0, "unit": "images/s", "seconds": 9.0}},
              "generation_studies_per_s": {"F->L": {"measured": 4.0, "guidance 1": 6.0},
                                           "T->F+L": {"measured": 2.0, "guidance 1": 3.0, "independent": 2.5}}}
    text = report(result)
    assert "image_vae    batch  16      40.0 images/s" in text
    assert "F->L           4.00      6.00   1.50" in text
    assert "T->F+L         2.00      3.00   1.50      2.50   1.25" in text
