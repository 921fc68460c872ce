"""The ComfyUI runtime adapter: what runs inside ComfyUI's sampling for the nodes (the attention hook and its
layer cursor, the sampler-run wrappers, the text layout, the inversions' samplers), and the one seam between model
families (families.py). p2p_core does the maths and never imports comfy; nodes/ only builds plans and patches."""
