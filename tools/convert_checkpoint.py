#!/usr/bin/env python3
"""Convert checkpoints: Hugging Face safetensors <-> Megatron distributed checkpoint, any TP/PP.

    python tools/convert_checkpoint.py --direction hf2mcore --src HF_DIR --dst MCORE_DIR \
        --tp 2 --pp 2 [--vpp 2] [--verify]
    python tools/convert_checkpoint.py --direction mcore2hf --src MCORE_DIR --dst HF_DIR \
        --tp 2 --pp 2 [--reference HF_DIR] [--verify]

Launches torchrun with tp * pp ranks itself (or runs directly when started by torchrun, e.g. on
several nodes). Same as `prco-mega convert`; see `prco_mega.bridge.convert_cli`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from prco_mega.bridge.convert_cli import main

if __name__ == "__main__":
    sys.exit(main())
