"""Training: recipes (config), the one loop (engine), optimizers/schedules/EMA, runs (runner, run folders)."""
from .config import Recipe, load_recipe, recipe_from_dict
from .engine import Trainer, TrainingDiverged

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "Trainer", "TrainingDiverged"]
