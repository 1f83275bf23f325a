"""Platform shims: what this machine needs before heavy packages import (CPU torchvision,
megatron-core without CUDA). Each shim is a no-op where the real thing works."""
