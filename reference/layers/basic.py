"""Embedding, output head and RMSNorm: float weights whose processing changes nothing."""

from __future__ import annotations

import torch

from loadspec.reference.loaders import default_weight_loader


class _FloatWeight(torch.nn.Module):
    """A module owning one float ``weight``; its layout is the kernel layout."""

    preserves_layout = True

    def __init__(self, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device | str | None) -> None:
        super().__init__()
        weight = torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
        weight.weight_loader = default_weight_loader  # type: ignore[attr-defined]  # vLLM: loaders ride on the Parameter
        self.weight = weight

    def export(self) -> dict[str, torch.Tensor]:
        """Kernel state: ``weight``."""
        return {"weight": self.weight.detach()}


class VocabEmbedding(_FloatWeight):
    """Token embedding ``[vocab, hidden]``."""

    def __init__(self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__((vocab_size, hidden_size), dtype=dtype, device=device)


class LMHead(_FloatWeight):
    """Output projection ``[vocab, hidden]``; ``tie_to`` shares the embedding's parameter [RELOAD-8]."""

    def __init__(self, vocab_size: int, hidden_size: int, *, tie_to: VocabEmbedding | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__((vocab_size, hidden_size), dtype=dtype, device=device)
        if tie_to is not None:
            self.weight = tie_to.weight


class RMSNorm(_FloatWeight):
    """RMSNorm scale ``[hidden]``."""

    def __init__(self, hidden_size: int, *, eps: float = 1e-5, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__((hidden_size,), dtype=dtype, device=device)
        self.eps = eps
