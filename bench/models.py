"""The benchmarks' models, built the same way in every process (seeded, nothing downloaded)."""

import torch


class RMSNorm(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + 1e-6)).to(x.dtype) * self.weight


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Block(torch.nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.attention_norm, self.mlp_norm = RMSNorm(width), RMSNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False)
        self.out = torch.nn.Linear(width, width, bias=False)
        self.gate_up = torch.nn.Linear(width, 2 * 1408, bias=False)
        self.down = torch.nn.Linear(1408, width, bias=False)

    def forward(self, x, cos, sin):
        b, t, w = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
        )
        q, k, v = (
            rotate(q.transpose(1, 2), cos, sin),
            rotate(k.transpose(1, 2), cos, sin),
            v.transpose(1, 2),
        )
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, w))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(torch.nn.functional.silu(gate) * up)


class Decoder(torch.nn.Module):
    def __init__(self, layers, width, heads, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = RMSNorm(width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head_dim = width // heads

    def forward(self, ids):
        x = self.embed(ids)
        position = torch.arange(ids.shape[1], device=ids.device, dtype=torch.float32)
        frequency = 1.0 / (
            10000 ** (torch.arange(0, self.head_dim, 2, device=ids.device) / self.head_dim)
        )
        angles = torch.outer(position, frequency).repeat(1, 2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))


def make_model(model_name, device):
    """The model and its input, seeded: the same in every process."""
    torch.manual_seed(0)
    if model_name == "llama":
        # A Llama-style decoder in plain torch (12 layers: RMSNorm, rotary attention through SDPA,
        # SwiGLU), bf16 on a GPU, its sequence dim dynamic. Plain torch, not transformers: torch
        # 2.11 itself fails to compile transformers 5.23's Llama (guards on its config views).
        m = Decoder(layers=12, width=512, heads=8, vocab=32000)
        m = m.to(
            device=device,
            dtype=torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32,
        )
        ids = torch.randint(0, 32000, (2, 128), generator=torch.Generator().manual_seed(1)).to(
            device
        )
        torch._dynamo.mark_dynamic(ids, 1)
        return m, ids
    if model_name == "mlp":
        m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
        x = torch.randn(8, 64)
    else:
        layer = torch.nn.TransformerEncoderLayer(
            d_model=512, nhead=8, dim_feedforward=2048, batch_first=True, norm_first=True
        )
        m = torch.nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
        x = torch.randn(4, 128, 512)
    return m.to(device), x.to(device)
