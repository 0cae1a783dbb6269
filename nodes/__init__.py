"""ComfyUI glue: the only part of the pack that imports `comfy`. Thin wrappers around the pure packages."""
