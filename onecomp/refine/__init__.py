"""Refinement after the layer-wise stage: the integer codes stay fixed and only
continuous parameters (group scales and norm weights)
are trained, block by block against the original block outputs, then end to
end against the original model's output distribution."""
