"""comfy-worker: ComfyUI workflows as a serverless API, with locked, verified models."""

__version__ = "0.1.0"
