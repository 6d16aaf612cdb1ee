"""Per-architecture knowledge: where the decoder blocks are and which linears a
block holds, in execution order, grouped by the input they read.

Linears in one group read the same tensor (q/k/v; gate/up), so they share
calibration statistics, and engines fuse them, so the planner keeps them on one
format. Adding an architecture is one registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from onecomp.errors import OneCompError

_LLAMA_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_PHI3_GROUPS = (
    ("self_attn.qkv_proj",),
    ("self_attn.o_proj",),
    ("mlp.gate_up_proj",),
    ("mlp.down_proj",),
)


@dataclass(frozen=True)
class ArchAdapter:
    model_type: str
    groups: tuple[tuple[str, ...], ...]
    blocks_path: str = "model.layers"
    final_norm_path: str = "model.norm"  # the norm between the last block and the head
    # linears whose output is added straight to the residual stream -> the module
    # whose input is that stream ("" for the block's input); empty where a norm
    # sits between the linear and the addition (Gemma's post-norms)
    residual_writers: dict[str, str] = field(default_factory=dict)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        module: nn.Module = model
        for part in self.blocks_path.split("."):
            module = getattr(module, part)
        assert isinstance(module, nn.ModuleList)
        return module

    def block_prefix(self, index: int) -> str:
        return f"{self.blocks_path}.{index}"

    def linear_names(self) -> list[str]:
        return [name for group in self.groups for name in group]

    def fused_units(self, names: list[str]) -> list[list[str]]:
        """``names`` (full layer names) grouped as engines fuse them: the linears of
        one block that read the same input (q/k/v; gate/up) form one unit."""
        index = {f"{self.block_prefix(b)}.{n}": (b, g) for b in range(self._max_block(names) + 1) for g, grp in enumerate(self.groups) for n in grp}
        units: dict[tuple[int, int], list[str]] = {}
        for name in names:
            units.setdefault(index.get(name, (-1, len(units))), []).append(name)
        return list(units.values())

    def _max_block(self, names: list[str]) -> int:
        prefix = self.blocks_path + "."
        nums = [int(n[len(prefix):].split(".", 1)[0]) for n in names if n.startswith(prefix)]
        return max(nums, default=-1)

    def check(self, model: nn.Module) -> None:
        """Fail early, with names, if the model does not have the expected linears."""
        block = self.blocks(model)[0]
        modules = dict(block.named_modules())
        missing = [n for n in self.linear_names() if not isinstance(modules.get(n), nn.Linear)]
        if missing:
            raise OneCompError(
                f"model of type {self.model_type!r} does not have the expected linear layers {missing}"
            )


_PRE_NORM_WRITERS = {"self_attn.o_proj": "", "mlp.down_proj": "post_attention_layernorm"}

ADAPTERS: dict[str, ArchAdapter] = {
    t: ArchAdapter(t, _LLAMA_GROUPS, residual_writers=_PRE_NORM_WRITERS) for t in ("llama", "mistral", "qwen2", "qwen3")
}
ADAPTERS.update({t: ArchAdapter(t, _LLAMA_GROUPS) for t in ("gemma3_text", "gemma2")})
ADAPTERS["phi3"] = ArchAdapter("phi3", _PHI3_GROUPS, residual_writers=_PRE_NORM_WRITERS)


def adapter_for(model_type: str) -> ArchAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise OneCompError(
            f"architecture {model_type!r} is not supported yet; supported: {', '.join(sorted(ADAPTERS))}"
        ) from None
