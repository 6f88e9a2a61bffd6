"""What steps the weights: LARS (`lars.py`), the learning-rate and weight-decay schedules
(`schedules.py`), and the optimizer set-up every method takes and the param-group keys it
uses (`setup.py`)."""

from rayssl.optim.lars import LARS

__all__ = ["LARS"]
