"""The RunPod serverless handler, for the Hub's checklist and for `python handler.py`.

The image does not use this file: its entrypoint (scripts/start.sh) runs
`comfy-worker runpod`, which is exactly what this does. The handler itself is
comfy_worker.entrypoints.runpod (sync models + boot ComfyUI, then one job at a time).
"""

import sys

from comfy_worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["runpod", *sys.argv[1:]]))
