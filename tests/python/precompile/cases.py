"""The functions the precompile tests compile. Tests copy this file into a temporary
directory (so that they can edit its source) and import it as `cases`."""

import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def scale(x):
    return x * 3 + 1


def graph_break(x):
    y = torch.sin(x) * 2
    torch._dynamo.graph_break()
    return torch.cos(y) + 1


def dynamic(x):
    return torch.relu(x).sum(dim=0) * x.shape[0]


def recompile(x):
    return torch.tanh(x) * 2


def unrelated(x):
    return x - 1
