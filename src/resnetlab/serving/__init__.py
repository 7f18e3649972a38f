"""`resnetlab serve`: a classifier behind HTTP (FastAPI + uvicorn), with dynamic batching, Prometheus
metrics and a web page. Optional dependencies: `pip install 'resnetlab[serve]'`."""
