"""A user's block for the import-path tests: `python("tests.compiler.user_blocks:Scaled", ...)`."""
import torch


class Scaled(torch.nn.Module):
    def __init__(self, scale: float = 1.0, width: int = 2):
        super().__init__()
        self.scale = scale
        self.weight = torch.nn.Parameter(torch.full((width,), 0.5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(z[:, : self.weight.shape[0]] * self.weight)
