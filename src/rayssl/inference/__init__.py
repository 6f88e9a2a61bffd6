"""What runs on a trained backbone after training: `rayssl eval` (`evaluate.py`, the probes of
a saved run, in this process or on Ray Train workers) and `rayssl embed` (`embed.py`, Ray
Data batch inference over a folder or Parquet)."""
