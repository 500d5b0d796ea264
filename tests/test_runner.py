"""The grid runner on the tiny model: in-process, resumed, and on local Ray actors with identical results."""
import json

from steer_eval.backends.base import GenerationConfig
from steer_eval.grid import build_grid
from steer_eval.prompts import bundled_prompts
from steer_eval.runner import RECORDS_FILE, BackendSpec, run_grid

CONFIG = GenerationConfig(max_new_tokens=4)


def _items():
    return build_grid(bundled_prompts("test")[:3], [1, 2], ["text"], ["composition"],
                      only=[["spanish"], ["spanish", "lowercase"]])


def _spec(tiny_model_dir):
    return BackendSpec("hf", str(tiny_model_dir), options={"batch_size": 8})


def test_in_process_then_resume(tiny_model_dir, tmp_path):
    items = _items()
    partial = run_grid(items[:4], _spec(tiny_model_dir), CONFIG, tmp_path, chunk_size=2, progress=False)
    assert len(partial) == 4
    records = run_grid(items, _spec(tiny_model_dir), CONFIG, tmp_path, chunk_size=2, progress=False)
    lines = (tmp_path / RECORDS_FILE).read_text().splitlines()
    assert len(lines) == len(items) == len(records) == 9  # the first four were not generated again
    assert records[:4] == partial
    assert [r["behaviors"] for r in records] == [list(i.behaviors) for i in items]
    assert all("Spanish" in r["instruction"] for r in records)


def test_ray_actors_give_the_same_records(tiny_model_dir, tmp_path):
    items = _items()
    local = run_grid(items, _spec(tiny_model_dir), CONFIG, tmp_path / "local", chunk_size=3, progress=False)
    on_ray = run_grid(items, _spec(tiny_model_dir), CONFIG, tmp_path / "ray", actors=2, chunk_size=2,
                      progress=False)
    assert [json.dumps(r, sort_keys=True) for r in on_ray] == [json.dumps(r, sort_keys=True) for r in local]
