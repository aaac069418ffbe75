"""Delta weights and merging of a LoCA layer: ``dW`` of an adapter (optionally cached for frozen adapters),
merge / unmerge into the base weight and PEFT's LoRA-conversion opt-in."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge

from .locations import NonFiniteLocationsError
from .ops import delta_weight


class MergeMixin:
    """``get_delta_weight``, ``merge`` and ``unmerge`` of :class:`~loca_diffusion.tuners.loca.layer.Linear`.

    Placed before :class:`~loca_diffusion.tuners.loca.layer.LoCALayer` in the layer's bases, so these override
    ``BaseTunerLayer``'s; reads the layer's adapter state (``loca_coefficients``, ``get_locations``, ``_scale``,
    ``fan_in_fan_out``) and the opt-in ``loca_delta_cache``.
    """

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``dW`` of one adapter in the base weight's dtype and storage layout (``(d_out, d_in)`` for
        ``nn.Linear``, transposed for ``Conv1D``), so that ``weight + get_delta_weight(name)`` is the
        merged weight."""
        weight = self.get_base_layer().weight
        coefficients = self.loca_coefficients[adapter]
        cache, key = self.loca_delta_cache, None
        if cache is not None and not coefficients.requires_grad:
            points = self.loca_fixed_locations[adapter] if self.loca_frozen[adapter] else self.loca_locations[adapter]
            key = (coefficients.data_ptr(), coefficients._version, points.data_ptr(), points._version)
            key += (self._scale(adapter), weight.dtype, weight.device, self.fan_in_fan_out)
            hit = cache.get(adapter)
            if hit is not None and hit[0] == key:
                return hit[1]
        delta = delta_weight(
            coefficients,
            self.get_locations(adapter),
            self.out_features,
            self.in_features,
            self._scale(adapter),
        )
        if self.fan_in_fan_out:
            delta = delta.T
        delta = delta.to(weight.dtype)
        if key is not None:
            cache[adapter] = (key, delta.detach())
        return delta

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """PEFT's ``convert_to_lora`` / ``save_as_lora`` opt-in: ``get_delta_weight`` is in the storage layout
        (transposed for ``Conv1D``), which is what PEFT's conversion expects for both layer types."""
        return True

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if self.loca_delta_cache is not None:
            self.loca_delta_cache.pop(adapter_name, None)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self.loca_coefficients:
                continue
            broken = ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            try:
                delta = self.get_delta_weight(name)
            except NonFiniteLocationsError as error:
                if safe_merge:  # PEFT's message for a broken adapter
                    raise broken from error
                raise
            if safe_merge:
                merged = base.weight.data.float() + delta.float()
                if not torch.isfinite(merged).all():
                    raise broken
                base.weight.data = merged.to(base.weight.dtype)
            else:
                base.weight.data += delta
            self.merged_adapters.append(name)
        self._weight_cache = None

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.loca_coefficients:
                base.weight.data -= self.get_delta_weight(name)
        self._weight_cache = None
