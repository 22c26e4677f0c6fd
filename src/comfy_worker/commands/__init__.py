"""One module per CLI command: ``main(args, settings) -> exit status``.

Thin edges: each turns parsed arguments into calls of the package's pure/IO parts and
prints the command's output. ``comfy_worker.cli`` maps exceptions to exit codes.
"""
