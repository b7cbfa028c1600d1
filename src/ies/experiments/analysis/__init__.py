"""The paper's analyses (why IES works, and where it holds), run by ``ies analyze``.

* :mod:`.instruments`: engine callbacks (full-set losses and per-order trackers, gradient
  norm, sharpness).
* :mod:`.dynamics`: mastery over time (Fig. 2), CV of loss differences (Fig. 3, App. C),
  forgetting (App. H).
* :mod:`.landscape`: gradient norm and sharpness (Fig. 4).
* :mod:`.robustness`: label noise (App. G) and transfer (Table 3).
"""

from .common import Study
from .dynamics import cv_of_differences, forgetting, mastery_over_time
from .instruments import GradNormProbe, LossProbe, SharpnessProbe
from .landscape import gradient_norm, sharpness
from .robustness import label_noise, transfer

__all__ = ["Study", "LossProbe", "GradNormProbe", "SharpnessProbe", "mastery_over_time", "cv_of_differences",
           "forgetting", "gradient_norm", "sharpness", "label_noise", "transfer"]
