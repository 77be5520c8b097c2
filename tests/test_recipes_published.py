"""The evaluation recipes of the published protocols (recipes/eval/, not synth_*): each loads
with its bases, has exactly one evaluation section, and that section passes its verb's
schema (unknown keys and values its dataclass refuses are errors). docs/recipes.md lists
each one. They need no data: nothing here reads the shards they point at."""
from __future__ import annotations

from pathlib import Path

import pytest

from avssl.config import check_section, load_recipe
from avssl.evaluation.clustering import ClusterConfig
from avssl.evaluation.finetune import FinetuneConfig
from avssl.evaluation.linear_probe import ProbeConfig
from avssl.evaluation.localization import LocalizationConfig
from avssl.evaluation.retrieval import RetrievalConfig
from avssl.evaluation.separation import SeparationConfig

ROOT = Path(__file__).resolve().parent.parent
EVAL_RECIPES = sorted(p for p in (ROOT / "recipes" / "eval").glob("*.yaml") if not p.name.startswith("synth_"))
SECTIONS = {"probe": ProbeConfig, "finetune": FinetuneConfig, "localization": LocalizationConfig,
            "separation": SeparationConfig, "cluster": ClusterConfig, "retrieval": RetrievalConfig}


def test_there_are_published_eval_recipes() -> None:
    assert len(EVAL_RECIPES) >= 9, [p.name for p in EVAL_RECIPES]


@pytest.mark.parametrize("path", EVAL_RECIPES, ids=lambda p: p.name)
def test_published_eval_recipe_loads_and_its_section_checks(path: Path) -> None:
    config = load_recipe(path)
    sections = [name for name in SECTIONS if config.get(name)]
    assert len(sections) == 1, f"{path.name}: expected one evaluation section, found {sections}"
    section = sections[0]
    checked = check_section(config, section, SECTIONS[section], where=str(path))
    assert isinstance(checked, SECTIONS[section])
    assert not str(config.data.shards).startswith("runs/"), "a published protocol reads benchmark shards"
    if section == "probe" and checked.fold_shards:
        assert config.data.shards in checked.fold_shards


@pytest.mark.parametrize("path", EVAL_RECIPES, ids=lambda p: p.name)
def test_published_eval_recipe_is_documented(path: Path) -> None:
    assert f"eval/{path.name}" in (ROOT / "docs" / "recipes.md").read_text()
