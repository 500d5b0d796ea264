"""The order-variance notebook runs top to bottom on a records file and shows what it promises."""
import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "order_variance.ipynb"


def test_order_variance_notebook_executes(tmp_path, monkeypatch):
    records = [{"prompt_id": "p1", "prompt": "Why?", "response": "...", "behaviors": order,
                "control_method": "steering", "mode": "composition", "followed": followed,
                "per_behavior": {b: followed for b in order}}
               for order, followed in [(["spanish", "lowercase"], True), (["lowercase", "spanish"], False),
                                       (["german", "json"], True), (["json", "german"], True), (["french"], True)]]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    monkeypatch.setenv("STEER_EVAL_RECORDS", str(path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps(outputs)
    assert "5 generations" in text and "lowercase+spanish" in text and "image/png" in text
    assert (tmp_path / "order_variance_summary.png").is_file()
