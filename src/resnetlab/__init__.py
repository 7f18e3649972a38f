"""resnetlab: ResNets from scratch in PyTorch — build, train, evaluate, fine-tune, serve."""
from .errors import UserError
from .inference.predict import Classifier, load
from .models import create_model, list_models, load_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "load_model", "Classifier", "UserError", "__version__"]
