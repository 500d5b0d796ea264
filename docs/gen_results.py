"""Copy the measured reports and plots of results/ into the site at build time (mkdocs-gen-files), under the same
paths (docs pages link to `results/...`). The repository's files stay the only copy."""
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "results/bench/grid_scale.md",
    "results/bench/train_speed.md",
    "results/bench/language_id.md",
    "results/bench/sentence_split.md",
    "results/bench/sentence_split_heldout.md",
    "results/token_eval/README.md",
    "results/token_eval/data_4k/README.md",
    "results/baselines/README.md",
    "results/fidelity/README.md",
    "results/fidelity/ablations.md",
    "results/ifeval_crosscheck/table.md",
    "results/compare/README.md",
    "results/token_tools/pca.png",
    "results/compare/accuracy_by_k.png",
]

for name in FILES:
    with mkdocs_gen_files.open(name, "wb") as out:
        out.write((ROOT / name).read_bytes())
