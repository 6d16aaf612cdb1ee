"""The block-streaming runtime below every stage: read a model's tensors one
module at a time from its safetensors files, run a skeleton whose weights are
only present while they are used, and write checkpoints tensor by tensor, so
memory follows the largest block rather than the model."""
