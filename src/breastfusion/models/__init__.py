"""Networks: image encoders (timm), branches, fusion and the multimodal network."""
