"""The letters model: a small text-to-image model in ComfyUI's formats, trained here on glyphs in many fonts.

Content is the letter (the prompt, "the letter R"), style is the font. `train.py` retrains everything,
seeded; `install.py` puts the committed files into a ComfyUI host. Importing this package makes
ComfyUI importable in-process on the CPU (`scripts/comfy_host.py`) and the pack importable as
`particle_repulsion`.
"""
import sys
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

import comfy_host  # noqa: E402

comfy_host.use_comfyui_in_process()
comfy_host.register_pack_namespace()
