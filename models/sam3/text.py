"""The SAM 3 text encoder: a CLIP-style causal text transformer whose token outputs are
resized to the detector's width.

Prompts are tokenized to a fixed context (32 ids in SAM 3); token embedding plus a learned
position table go through pre-norm residual blocks (causal self-attention, GELU MLP), a final
LayerNorm, and a linear `resizer` to d_model. Every token's output is kept (no pooling). The
mask marks padding (id 0) with True, as PyTorch attention's key_padding_mask expects.

Names equal the official `sam3.model.text_encoder_ve.VETextEncoder` (the detector's
`backbone.language_backbone.*`), so its state dict loads unchanged; `encoder.text_projection`
(width x 512, CLIP's pooled projection) is held for that only, SAM 3 never uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import Tokenizer

CONTEXT_LENGTH = 32  # SAM 3's prompts: start + at most 30 ids + end
VOCAB_SIZE = 49408  # CLIP's BPE ids (tokenizer.MAX_MERGES merges + 512 byte symbols + 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed input projection (the parameter names of
    nn.MultiheadAttention): BxLxW, optional LxL additive float mask -> BxLxW."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"expected heads to divide width {width}, got {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, L, c)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class FeedForward(nn.Module):
    """c_fc -> GELU -> c_proj: BxLxW -> BxLxW (hidden width * mlp_ratio)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)), on BxLxW tokens."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = FeedForward(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """`layers` residual attention blocks: BxLxW -> BxLxW."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class TextTransformer(nn.Module):
    """Token ids BxL (L <= context_length, int64) -> every token's output BxLxwidth (float32),
    after the final LayerNorm; attention is causal."""

    def __init__(self, context_length: int, vocab_size: int, width: int, heads: int,
                 layers: int, mlp_ratio: float = 4.0, output_dim: int = 512) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)  # LxL, -inf above diagonal
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))  # unused by SAM 3
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"expected at most {self.context_length} tokens, got {n}")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.transformer(x, self.attn_mask[:n, :n])
        return self.ln_final(x)


class TextEncoder(nn.Module):
    """Prompts -> SAM 3's language features (the official `VETextEncoder`).

    `forward(texts)` returns (mask, features, embeds):
    - mask: BxL bool, True at padding (L = context_length, 32 in SAM 3);
    - features: LxBxd_model float32, every token's output resized to d_model (256), sequence
      first;
    - embeds: LxBxwidth float32, the token embeddings alone (before positions and the
      transformer), sequence first.
    `forward_text(captions)` returns the same as the dict of the official backbone's
    `forward_text`. The tokenizer is the caller's (build it once, share it).
    """

    def __init__(self, tokenizer: Tokenizer | None, d_model: int, width: int, heads: int,
                 layers: int, context_length: int = CONTEXT_LENGTH,
                 vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tokenizer: Tokenizer | None = None
        if tokenizer is not None:
            self.use_tokenizer(tokenizer)
        self.context_length = context_length
        self.encoder = TextTransformer(context_length, vocab_size, width, heads, layers)
        self.resizer = nn.Linear(width, d_model)

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Tokenize with `tokenizer` from now on (a model is built before its vocabulary file
        is known: the registry builds it without one)."""
        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(f"expected a tokenizer of at most {self.vocab_size} ids (the "
                             f"embedding table), got {tokenizer.vocab_size} from "
                             f"'{tokenizer.bpe_path}'")
        self.tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> Bxcontext_length int64 ids (CPU)."""
        if self.tokenizer is None:
            raise RuntimeError("expected a tokenizer (use_tokenizer, or the model's "
                               "use_vocabulary(path)) before encoding text, got none")
        return self.tokenizer(texts, context_length=self.context_length)

    def forward_tokens(
        self, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BxL int64 ids (from `tokenize`, on this module's device) -> (mask, features, embeds)
        as `forward`."""
        padding = tokens == 0  # BxL
        embeds = self.encoder.token_embedding(tokens)  # (B, L, width)
        memory = self.encoder(tokens)  # (B, L, width)
        features = self.resizer(memory.transpose(0, 1))  # (L, B, d_model)
        return padding, features, embeds.transpose(0, 1)

    def forward(
        self, texts: list[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B prompts -> (BxL bool mask, LxBxd_model features, LxBxwidth embeds); see the class
        doc. `device`: where to run (default: this module's)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"expected a list of strings, got {type(texts).__name__}")
        device = device if device is not None else self.resizer.weight.device
        return self.forward_tokens(self.tokenize(list(texts)).to(device))

    def forward_text(
        self, captions: list[str], additional_text: list[str] | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """The official `SAM3VLBackbone.forward_text` (eval): B captions (and A additional
        texts, encoded in the same pass) -> dict with
        - "language_features": LxBxd_model float32 (L = context_length);
        - "language_mask": BxL bool, True at padding;
        - "language_embeds": LxBxwidth float32, token embeddings before the encoder;
        - with additional_text, "additional_text_features" LxAxd_model and
          "additional_text_mask" AxL."""
        texts = list(captions) + list(additional_text or [])
        mask, features, embeds = self(texts, device=device)
        out = {}
        if additional_text is not None:
            out["additional_text_features"] = features[:, len(captions):]
            out["additional_text_mask"] = mask[len(captions):]
        out["language_features"] = features[:, :len(captions)]
        out["language_mask"] = mask[:len(captions)]
        out["language_embeds"] = embeds[:, :len(captions)]
        return out


def build_text_encoder(tokenizer: Tokenizer | None = None) -> TextEncoder:
    """SAM 3's text encoder at full size: width 1024, 16 heads, 24 blocks, 32 tokens,
    features of width 256."""
    return TextEncoder(tokenizer, d_model=256, width=1024, heads=16, layers=24,
                       context_length=32, vocab_size=49408)
