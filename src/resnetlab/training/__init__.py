"""Training: recipes (config), the one loop (engine), optimizers/schedules/EMA, checkpoints."""
from .config import Recipe, load_recipe, recipe_from_dict
from .engine import Trainer, TrainingDiverged, select_device, select_precision

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "Trainer", "TrainingDiverged", "select_device",
           "select_precision"]
