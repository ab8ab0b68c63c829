"""The interpretable-CNN method: templates, the masked layer, the template filter loss,
filter-to-category assignment and the networks that carry them."""
