"""Model cards: written once per saved model folder, from the manifest and metrics, without paths."""

from support.model_card import USE, write_model_cards

MANIFEST = {
    "run_id": "r1", "profile": "quick", "created": "2026-12-01T10:00:00+00:00",
    "git": {"commit": "0123456789abcdef0123", "dirty": False},
    "dataset_fingerprint": {"kind": "phantom", "root": "/secret/place/data", "sha256": "ab" * 32},
    "stand_ins": ["00_data.dataset_root is empty; the phantom runs in place of MIMIC-CXR-JPG"],
    "parameters": {"02_ddpm": {"run_dir": "/secret/place", "max_steps": 150, "dataset_root": "/secret/data",
                               "views": ["PA", "AP"]}},
}


def test_cards_say_what_the_model_is_and_never_where_the_data_lives(tmp_path):
    models = tmp_path / "models"
    (models / "ddpm").mkdir(parents=True)
    (models / "ddpm" / "config.json").write_text("{}")
    (models / ".tmp-half-written").mkdir()
    metrics = {"updates": 150, "final_loss": 0.0821, "pixel_fd_trained": float("nan"), "ok": True,
               "pipeline": "/secret/place/models/ddpm/pipeline", "by_update": {"75": 1.0}}
    written = write_model_cards(models, "02_ddpm", MANIFEST, metrics)
    assert written == [models / "ddpm" / "README.md"]
    card = written[0].read_text()
    assert "`02_ddpm` of run `r1`" in card and "commit `0123456789ab`" in card
    assert "dataset kind `phantom`, fingerprint `sha256:abababababababab`" in card
    assert "- training updates: 150" in card                                # the index's curated figures
    assert "- trained model vs held-out images: too few samples pixel FD" in card   # NaN is never a number
    assert '"max_steps": 150' in card and '"dataset_root": "(a local path)"' in card
    assert "config.json" in card and USE in card and "stand-in: 00_data.dataset_root" in card
    assert "/secret" not in card and "run_dir" not in card

    # a second notebook's pass leaves the card alone and cards only the new folder
    (models / "t2i-lora").mkdir()
    again = write_model_cards(models, "01_lora_t2i", MANIFEST, {})
    assert again == [models / "t2i-lora" / "README.md"]
    assert written[0].read_text() == card
    assert "No headline figures" in again[0].read_text() and "config.json" not in again[0].read_text()
