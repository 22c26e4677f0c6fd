"""ComfyUI as a child process: launch and supervise it, talk to its HTTP and websocket API."""
