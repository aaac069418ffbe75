"""The location state of a LoCA layer: continuous ``[0, 1]`` locations while they are learned, integer ones once
frozen, projection back onto the grid, the frozen flags and the state-dict hooks that keep them in step."""

from __future__ import annotations

import zlib

import torch

from .ops import indices_to_locations, locations_to_indices

# value of every entry of `loca_fixed_locations[name]` while the locations are learned (not frozen)
NOT_FROZEN = -1


class NonFiniteLocationsError(ValueError):
    """A location parameter holds NaN or Inf (e.g. after an optimizer step on NaN gradients)."""


class LocationsMixin:
    """The location bookkeeping of :class:`~loca_diffusion.tuners.loca.layer.LoCALayer`.

    Reads and writes the layer's ``loca_locations`` (continuous, ``[0, 1]``), ``loca_fixed_locations`` (integer,
    ``NOT_FROZEN`` while learned), ``loca_frozen`` / ``loca_inference_frozen`` (flags), ``loca_finite_stamp`` and
    the caches derived from the location values (``_indices_cache``, ``_plans``, ``_weight_cache``).
    """

    def get_locations(self, adapter_name: str) -> torch.Tensor:
        """The integer ``(row, col)`` locations (``LongTensor [2, B]``) the forward pass uses.

        Locations the optimizer moved outside ``[0, 1]`` are first projected back onto it
        (:meth:`project_locations`), whatever optimizer or schedule moved them.

        Args:
            adapter_name: The LoCA adapter of this layer.

        Returns:
            ``LongTensor [2, B]``: rows in ``[0, d_out)``, columns in ``[0, d_in)``.
        """
        if self.loca_frozen[adapter_name]:
            return self.loca_fixed_locations[adapter_name]
        points = self.loca_locations[adapter_name]
        stamp = (points.data_ptr(), points._version)
        cached = self._indices_cache.get(adapter_name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if self.loca_finite_stamp.get(adapter_name) != stamp:
            # on the detached values: `isfinite` of a tensor that requires grad records autograd ops (abs) whose
            # saved tensors a checkpoint recomputation, which finds the check done, would not save again
            if not torch.isfinite(points.detach()).all():
                layer = f"layer '{self.loca_layer_name}'" if self.loca_layer_name else "a layer"
                raise NonFiniteLocationsError(
                    f"LoCA adapter '{adapter_name}' of {layer} ({self.out_features}x{self.in_features}) has NaN or "
                    "Inf locations; the adapter is broken (a diverged training step?)"
                )
            # checked only when the values changed (an optimizer step), so this is a projection after each step
            self.project_locations(adapter_name)
            stamp = (points.data_ptr(), points._version)
            self.loca_finite_stamp[adapter_name] = stamp
        indices = locations_to_indices(points, self.out_features, self.in_features)
        self._indices_cache[adapter_name] = (stamp, indices)
        return indices

    def project_locations(self, adapter_name: str) -> None:
        """Clamp the continuous locations of ``adapter_name`` into ``[0, 1]`` in place (no-op when inside).

        Plain optimizers (``transformers.Trainer``, weight decay, large learning rates) would otherwise walk them
        off the grid: the forward rounds and clips them, so the border rows/columns collect coefficients while
        their gradients keep pushing outward. Projecting keeps the parameter on the grid (projected gradient
        descent), so a gradient pointing back inward moves the location at once.
        """
        points = self.loca_locations[adapter_name]
        if points.device.type == "meta" or points.numel() == 0:
            return
        with torch.no_grad():  # nothing recorded for autograd (see get_locations)
            if bool(points.min() < 0) or bool(points.max() > 1):
                points.clamp_(0.0, 1.0)

    def locations_frozen(self, adapter_name: str) -> bool:
        return self.loca_frozen[adapter_name]

    def freeze_locations(self, adapter_name: str) -> None:
        """Freeze the locations at their current rounded values, stored as integers from now on.

        Args:
            adapter_name: The LoCA adapter of this layer whose locations stop learning.

        The continuous parameter stays registered (a DistributedDataParallel wrapper expects every
        registered parameter to keep receiving gradients; the frozen one receives zeros) but no longer
        has any effect.
        """
        if not self.loca_frozen[adapter_name]:
            with torch.no_grad():
                self.loca_fixed_locations[adapter_name].copy_(self.get_locations(adapter_name))
            self.loca_frozen[adapter_name] = True
        self.loca_inference_frozen[adapter_name] = False
        self._weight_cache = None

    def _prepare_state_dict_for_load(self, state_dict, prefix) -> None:
        """Complete checkpoints written before every mode had the same keys, then load as usual.

        Older checkpoints hold ``loca_fixed_locations`` only once frozen, and adapters loaded for
        inference had no ``loca_locations``; the missing entry follows from the other one.
        """
        for name in self.loca_coefficients:
            fixed_key, points_key = f"{prefix}loca_fixed_locations.{name}", f"{prefix}loca_locations.{name}"
            if points_key in state_dict and fixed_key not in state_dict:
                state_dict[fixed_key] = torch.full_like(self.loca_fixed_locations[name], NOT_FROZEN)
            elif fixed_key in state_dict and points_key not in state_dict:
                state_dict[points_key] = indices_to_locations(
                    state_dict[fixed_key], self.out_features, self.in_features
                )
        self._weight_cache = None

    def _sync_frozen_flags(self) -> None:
        """After a state-dict load: the buffers say which adapters are frozen."""
        for name, fixed in self.loca_fixed_locations.items():
            self.loca_frozen[name] = fixed.device.type != "meta" and bool((fixed != NOT_FROZEN).all())

    def _forget_locations(self) -> None:
        """Drop everything derived from the location values (finiteness checks, rounding, plans)."""
        self.loca_finite_stamp.clear()
        self._indices_cache.clear()
        self._plans.clear()


def _sync_frozen_flags_after_load(module: LocationsMixin, incompatible_keys) -> None:
    """``register_load_state_dict_post_hook`` hook: the loaded buffers say which adapters are frozen."""
    module._sync_frozen_flags()


def initial_location_indices(random_loc_seed: int, layer_name: str, d_out: int, d_in: int, n: int) -> torch.Tensor:
    """The integer ``(row, col)`` locations (``LongTensor [2, n]``) a layer starts from: distinct cells, uniform
    at random from ``random_loc_seed`` and the layer's name (one stream per layer: same-shaped layers would
    otherwise start at identical locations). A saved adapter's starting point can be recomputed from its config."""
    generator = torch.Generator().manual_seed(int(random_loc_seed) * 1_000_003 + zlib.crc32(layer_name.encode()))
    flat = torch.randperm(d_out * d_in, generator=generator)[:n]
    return torch.stack([flat // d_in, flat % d_in])
