"""Training judges, a different job from training candidates: PandaLM-format judges on GPUs
(`data.py` records and filters, `training.py` the Trainer and DeepSpeed run, `synthetic.py`
pairs with known verdicts from Alpaca's seed tasks) and the builtin CPU judge (`builtin.py`)."""
