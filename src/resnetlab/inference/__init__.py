"""Using trained models: the Python API for applications (Classifier, load) and `predict`."""
