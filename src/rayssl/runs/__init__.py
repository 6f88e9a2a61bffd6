"""Run folders and what is read from or written to them: where they live (`storage.py`,
local or at a URI), checkpoint files (`state.py`), the checkpoint behind a path a user
gives (`resolve.py`), pretrained backbones and exports (`pretrained.py`), `rayssl runs`
(`listing.py`), curves and `rayssl plot` (`plots.py`), TensorBoard and MLflow
(`tracking.py`)."""
